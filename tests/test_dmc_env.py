"""DMC from pixels and from states: task names, GL loading, argument checks, and the envpool /
dm_control backends agreeing."""

from __future__ import annotations

import numpy as np
import pytest

from psrl_jax.envs import dmc, gl
from psrl_jax.envs.dmc import (
    DMControlEnvs,
    action_repeat_for,
    make_dmc_envs,
    resolve_task,
)
from psrl_jax.envs.episodes import run_evaluation

PLANET = {
    "finger_spin": ("finger", "spin", "FingerSpin-v1", 2),
    "walker_walk": ("walker", "walk", "WalkerWalk-v1", 2),
    "cartpole_swingup": ("cartpole", "swingup", "CartpoleSwingup-v1", 8),
    "reacher_easy": ("reacher", "easy", "ReacherEasy-v1", 4),
    "cheetah_run": ("cheetah", "run", "CheetahRun-v1", 4),
    "ball_in_cup_catch": ("ball_in_cup", "catch", "BallInCupCatch-v1", 4),
}


# --------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize("name", list(PLANET))
def test_resolve_planet_tasks_in_several_spellings(name):
    domain, task, envpool_id, repeat = PLANET[name]
    for spelling in (name, name.replace("_", "-"), name.upper(), envpool_id, envpool_id.lower(), f" {name} "):
        resolved = resolve_task(spelling)
        assert (resolved.name, resolved.domain, resolved.task, resolved.envpool_id) == (name, domain, task, envpool_id)
    assert action_repeat_for(resolve_task(name), 0) == repeat
    assert action_repeat_for(resolve_task(name), 3) == 3


def test_unknown_task_suggests_and_defaults():
    with pytest.raises(ValueError, match="walker_walk"):
        resolve_task("walker_wlak")
    with pytest.raises(ValueError, match="unknown DMC task"):
        resolve_task("zzzz")
    assert action_repeat_for(resolve_task("hopper_hop"), 0) == 4  # not a PlaNet task
    with pytest.raises(ValueError):
        action_repeat_for(resolve_task("hopper_hop"), -1)


def test_every_envpool_task_maps_onto_dm_control():
    gl.load_gl()  # dm_control.suite picks its GL backend at import
    from dm_control import suite

    tasks = dmc._dmc_tasks()
    assert len(tasks) >= 50
    missing = [t for t in tasks.values() if (t.domain, t.task) not in suite.ALL_TASKS]
    assert not missing
    assert resolve_task("HumanoidCMURun-v1").domain == "humanoid_CMU"
    assert resolve_task("point-mass-easy").domain == "point_mass"
    # every envpool DMC episode is 1000 control steps, the constant the episode clock relies on
    specs = [
        kw for module, _, kw in dmc.envpool.registration.registry.specs.values() if module == dmc._DMC_ENTRY_MODULE
    ]
    assert {kw["max_episode_steps"] for kw in specs} == {dmc.EPISODE_CONTROL_STEPS}


# --------------------------------------------------------------------------------------------
# GL and argument checks


def test_missing_gl_library_names_the_packages():
    before = dict(gl._loaded)
    with pytest.raises(gl.GLError) as info:
        gl.load_gl("egl", _libraries={"egl": ("libEGL-does-not-exist.so.1",)})
    message = str(info.value)
    assert "libegl1" in message and "libosmesa6" in message and "libEGL-does-not-exist.so.1" in message
    assert gl._loaded == before  # the cache is not poisoned
    with pytest.raises(ValueError, match="unknown GL backend"):
        gl.load_gl("vulkan")
    assert gl.load_gl() in gl.BACKENDS
    assert gl.load_gl() == gl.load_gl()  # idempotent


def test_dm_control_without_a_usable_gl_names_the_packages(monkeypatch):
    """With libEGL hidden, envpool's private copy satisfies load_gl but dm_control's PyOpenGL finds
    none and its import fails (an AttributeError deep in PyOpenGL, seen in a mount namespace that
    hid the system libEGL): that is a GLError naming the packages, not a traceback."""
    import sys

    import dm_control

    monkeypatch.delattr(dm_control, "suite", raising=False)
    monkeypatch.setitem(sys.modules, "dm_control.suite", None)  # the import fails
    with pytest.raises(gl.GLError, match="libegl1.*libosmesa6.*env.gl=osmesa"):
        dmc.make_dmc_envs("cartpole_swingup", 1, 0, action_repeat=8, backend="dm_control")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "mujoco"}, "backend"),
        ({"action_repeat": 0}, "action_repeat"),
        ({"num_envs": 0}, "num_envs"),
        ({"image_size": 0}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"observation": "rgb"}, "observation"),
    ],
)
def test_bad_arguments_fail_before_building(kwargs, match, monkeypatch):
    def no_build(*args, **kw):
        raise AssertionError("an env was built before the arguments were checked")

    monkeypatch.setattr(dmc, "EnvpoolDMCEnvs", no_build)
    monkeypatch.setattr(dmc, "DMControlEnvs", no_build)
    monkeypatch.setattr(dmc, "load_gl", no_build)
    args = {"num_envs": 1, "seed": 0, "action_repeat": 8, "backend": "envpool"} | kwargs
    with pytest.raises(ValueError, match=match):
        make_dmc_envs("cartpole_swingup", args.pop("num_envs"), args.pop("seed"), **args)


# --------------------------------------------------------------------------------------------
# The two backends


def _copy_envpool_start_into_dm_control(dm_envs: DMControlEnvs, seed: int) -> None:
    """Puts each dm_control cartpole at the start envpool draws for the same seed.

    envpool (C++ mt19937) and dm_control (NumPy RandomState) draw different starts from the same seed,
    so the start is read from a state-only envpool env with that seed (the pixel env draws the same
    start: the first frames then agree, checked below) and written into dm_control's physics.
    """
    import envpool

    state_env = envpool.make(
        "CartpoleSwingup-v1", env_type="dm", num_envs=dm_envs.num_envs, batch_size=dm_envs.num_envs, seed=seed
    )
    ts = state_env.reset()
    position, velocity = np.asarray(ts.observation.position), np.asarray(ts.observation.velocity)
    for i, env in enumerate(dm_envs._envs):
        with env.physics.reset_context():
            env.physics.data.qpos[:] = [position[i, 0], np.arctan2(position[i, 2], position[i, 1])]
            env.physics.data.qvel[:] = velocity[i]
    state_env.close()


PIXEL_STEPS = 32  # 256 control steps: 512 envpool renders for the 2 envs


def test_backends_agree_on_cartpole_swingup():
    """Same frame shapes, dtypes and action bounds; same rewards and like frames from the same
    physics start, over the first PIXEL_STEPS agent steps. (envpool renders every control step, so a
    whole episode would be 2,000 renders here. The state test below plays whole episodes on both
    backends through the same step code: episode clock, LAST, truncation, auto-reset.)

    Measured (envpool 1.2.5 with its bundled MuJoCo vs dm_control 1.0.50 / mujoco 3.17, seed 5,
    2 envs, 32 agent steps of uniform random actions, repeat 8): after copying the start, the
    largest per-agent-step reward gap was 1.2e-7 and the returns differed by 6e-8 (returns 16.3 and
    4.5); first frames differed by at most 6 pixel levels (0.19 mean abs), against 72 levels
    without the copy, and later frames by at most 8 (per-frame mean brightness by 0.02). Over a
    whole episode (125 steps, this test before 2026-12-02) the reward gap grew to 2.0e-5. Bounds
    below: 1e-3 per step, 0.05 per return, 16 levels per pixel and 1.0 in per-frame mean brightness.
    """
    seed, size, repeat = 5, 64, 8
    envs = [
        make_dmc_envs("cartpole_swingup", 2, seed, action_repeat=repeat, image_size=size, backend=b, num_threads=1)
        for b in ("envpool", "dm_control")
    ]
    try:
        ep, dm = envs
        for e in envs:
            assert e.frame_shape == (size, size, 3)
            assert e.action_dim == 1
            np.testing.assert_array_equal(e.action_low, [-1.0])
            np.testing.assert_array_equal(e.action_high, [1.0])
        first = [e.reset() for e in envs]
        _copy_envpool_start_into_dm_control(dm, seed)
        first[1].frame = np.stack([dm._render(i) for i in range(2)])
        for f in first:
            assert f.frame.shape == (2, size, size, 3) and f.frame.dtype == np.uint8
            assert f.first.all() and not f.last.any() and not f.reward.any()
        pixel_gap = np.abs(first[0].frame.astype(np.int16) - first[1].frame.astype(np.int16))
        assert pixel_gap.max() <= 16

        actions = np.random.default_rng(0).uniform(-1, 1, size=(PIXEL_STEPS, 2, 1)).astype(np.float32)
        rewards = np.zeros((2, PIXEL_STEPS, 2), np.float64)
        for t in range(PIXEL_STEPS):
            steps = [e.step(actions[t]) for e in envs]
            for b, s in enumerate(steps):
                assert s.frame.shape == (2, size, size, 3) and s.frame.dtype == np.uint8
                assert not s.first.any() and not s.last.any() and not s.truncated.any()
                np.testing.assert_array_equal(s.discount, 1.0)
                assert ((s.reward >= 0) & (s.reward <= repeat)).all()  # cartpole rewards are in [0, 1]
                rewards[b, t] = s.reward
            brightness = [s.frame.reshape(2, -1).mean(1) for s in steps]
            np.testing.assert_allclose(brightness[0], brightness[1], atol=1.0)
        np.testing.assert_allclose(rewards[0], rewards[1], atol=1e-3)
        np.testing.assert_allclose(rewards[0].sum(0), rewards[1].sum(0), atol=0.05)
        assert rewards[0].sum() > 1.0  # the comparison is not vacuous
    finally:
        for e in envs:
            e.close()


def _dm_control_state(env) -> np.ndarray:
    """dm_control's own observation of `env`'s current physics, flattened in its key order."""
    observation = env.task.get_observation(env.physics)
    return np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in observation.values()])


def test_backends_agree_on_cartpole_swingup_states():
    """observation="state": float32 [N, D] in dm_control's key order (cartpole: position x, cos, sin
    and velocity, D = 5), the same states from the same physics start under the same actions.

    Measured (seed 5, 2 envs, 125 agent steps of uniform random actions, repeat 8): the largest
    state gap over the episode was 3.6e-5 (the pole's angular velocity), while the states moved by
    up to 8.4. Bounds: 1e-6 at the copied start, 1e-3 along the episode.
    """
    seed, repeat = 5, 8
    envs = [
        make_dmc_envs("cartpole_swingup", 2, seed, action_repeat=repeat, backend=b, num_threads=1, observation="state")
        for b in ("envpool", "dm_control")
    ]
    try:
        ep, dm = envs
        for e in envs:
            assert e.frame_shape == (5,) and e.frame_dtype == np.float32
        first = [e.reset() for e in envs]
        _copy_envpool_start_into_dm_control(dm, seed)
        first[1].frame = np.stack([_dm_control_state(env) for env in dm._envs])
        for f in first:
            assert f.frame.shape == (2, 5) and f.frame.dtype == np.float32 and f.first.all()
        np.testing.assert_allclose(first[0].frame, first[1].frame, atol=1e-6)
        np.testing.assert_allclose(np.hypot(first[0].frame[:, 1], first[0].frame[:, 2]), 1.0, atol=1e-6)  # cos, sin

        episode = 1000 // repeat  # DMC's 1000 control steps: 125 agent steps, written out, not the code's own
        actions = np.random.default_rng(0).uniform(-1, 1, size=(episode, 2, 1)).astype(np.float32)
        gap = 0.0
        for t in range(episode):
            steps = [e.step(actions[t]) for e in envs]
            for s in steps:
                assert s.frame.shape == (2, 5) and s.frame.dtype == np.float32
                assert not s.first.any()
                assert s.last.all() == (t == episode - 1) and s.last.any() == (t == episode - 1)
                np.testing.assert_array_equal(s.truncated, s.last)  # a time limit, not a termination
                np.testing.assert_array_equal(s.discount, 1.0)
                assert ((s.reward >= 0) & (s.reward <= repeat)).all()  # cartpole rewards are in [0, 1]
            np.testing.assert_array_equal(steps[1].frame, np.stack([_dm_control_state(env) for env in dm._envs]))
            gap = max(gap, float(np.abs(steps[0].frame - steps[1].frame).max()))
        assert gap < 1e-3
        moved = np.abs(steps[0].frame - first[0].frame).max()
        assert moved > 0.1  # the comparison is not vacuous

        for e in envs:  # auto-reset: the step after LAST is the FIRST of a new episode
            s = e.step(actions[0])
            assert s.first.all() and not s.last.any() and not s.reward.any()
            s = e.step(actions[0])
            assert not s.first.any() and not s.last.any()
    finally:
        for e in envs:
            e.close()


def test_state_dimension_matches_dm_control_spec_on_walker():
    envs = [
        make_dmc_envs("walker_walk", 1, 0, action_repeat=2, backend=b, num_threads=1, observation="state")
        for b in ("envpool", "dm_control")
    ]
    try:
        spec = envs[1]._envs[0].observation_spec()  # orientations 14, height 1, velocity 9
        assert list(spec) == ["orientations", "height", "velocity"]
        for e in envs:
            assert e.frame_shape == (24,)
            step = e.reset()
            assert step.frame.shape == (1, 24) and np.isfinite(step.frame).all()
    finally:
        for e in envs:
            e.close()


@pytest.mark.parametrize("backend", ["dm_control", "envpool"])
def test_env_i_of_a_pool_seeded_s_is_env_0_of_a_pool_seeded_s_plus_i(backend):
    """What seed-parallel and multi-process runs rely on (psrl_jax/train/trainer.py): a process that
    owns agents k.. builds its envs from seed s + k and steps the same physics as rows k.. of the
    pool of every agent seeded s, across an episode's end and auto-reset (125 agent steps). States
    rather than pixels: the seed sets the physics (the same code seeds both), and frames are
    rendered from the physics (the backends' pixels: test_backends_agree_on_cartpole_swingup)."""
    steps = 130
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, 3, 1)).astype(np.float32)
    kwargs = dict(action_repeat=8, backend=backend, num_threads=1, observation="state")
    whole = make_dmc_envs("cartpole_swingup", 3, 5, **kwargs)
    tail = make_dmc_envs("cartpole_swingup", 2, 6, **kwargs)
    try:
        streams = [[whole.reset()], [tail.reset()]]
        for a in actions:
            streams[0].append(whole.step(a))
            streams[1].append(tail.step(a[1:]))
    finally:
        whole.close(), tail.close()
    for field in ("frame", "reward", "first", "last"):
        rows = [np.stack([getattr(step, field) for step in s]) for s in streams]
        np.testing.assert_array_equal(rows[0][:, 1:], rows[1], err_msg=field)
    frames = np.stack([step.frame for step in streams[0]])
    assert not np.array_equal(frames[:, 0], frames[:, 1])  # the envs differ from one another
    assert any(step.last.all() for step in streams[0])  # an episode ended and reset


def test_evaluation_plays_whole_episodes():
    """run_evaluation on DMC: whole 125-step episodes, truncated, two per env, stacked observations.
    States: the episode logic is the same for pixels (rendered in the end-to-end runs), 500 renders
    here took 17 s."""
    envs = make_dmc_envs("cartpole_swingup", 2, 0, action_repeat=8, backend="dm_control", observation="state")
    seen = []
    stacks = []

    def policy(stacked, first):
        stacks.append(stacked.shape)
        return np.full((2, 1), 0.5, np.float32)

    try:
        returns = run_evaluation(envs, policy, episodes_per_env=2, frame_stack=3, on_episode=seen.append)
    finally:
        envs.close()
    assert returns.shape == (4,) and returns.dtype == np.float64
    assert np.isfinite(returns).all()
    assert ((returns >= 0) & (returns <= 125 * 8)).all()
    assert [e.length for e in seen] == [125] * 4 and all(e.truncated for e in seen)
    np.testing.assert_allclose(sorted(returns), sorted(e.episode_return for e in seen))
    assert stacks[0] == (2, 3, 5)  # cartpole's 5 state numbers, 3 stacked
