"""The trainer's fused mode (config.loop="fused", psrl_jax/train/trainer.py and envs/atari_xla.py)
against its host mode, and the host mode against itself: the same seed on the same machine gives the
same metrics."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import records_without_timing

from configs import rainbow
from psrl_jax.config import ConfigError, validate_atari_config
from psrl_jax.envs.atari import convert_timestep, make_atari_envs
from psrl_jax.envs.atari_xla import convert_timestep_jax
from psrl_jax.train.trainer import Trainer


def _env_config():
    c = rainbow.get_config("smoke")
    c.env.max_episode_frames = 800  # 200 agent steps: truncations happen within the test
    return c


def test_envpool_xla_step_and_jax_conversion_match_the_host_step():
    """envpool's XLA step inside a jitted lax.scan replays the host stream for the same seed and
    actions, and convert_timestep_jax gives convert_timestep's arrays (life loss, truncation, order)."""
    config, n, steps = _env_config(), 3, 700
    actions = np.random.default_rng(0).integers(0, 18, (steps, n)).astype(np.int32)

    host_envs = make_atari_envs(config.env, n, seed=5, train=True)
    host, lives = [], None
    _, lives = convert_timestep(host_envs.reset(), None, True)
    for a in actions:
        arrays, lives = convert_timestep(host_envs.step(a, np.arange(n, dtype=np.int32)), lives, True)
        host.append(arrays)
    host_envs.close()

    envs = make_atari_envs(config.env, n, seed=5, train=True)
    handle, _, _, xla_step = envs.xla()
    _, first_lives = convert_timestep(envs.reset(), None, True)

    def body(carry, a):
        handle, lives = carry
        handle, ts = xla_step(handle, a, jnp.arange(n, dtype=jnp.int32))
        arrays, lives = convert_timestep_jax(ts, lives, True)
        return (handle, lives), arrays

    _, fused = jax.jit(lambda h, lv, a: jax.lax.scan(body, (h, lv), a))(handle, jnp.asarray(first_lives), actions)
    fused = jax.device_get(fused)
    envs.close()

    for field in ("frame", "reward", "raw_reward", "discount", "first", "last", "truncated"):
        expected = np.stack([getattr(h, field) for h in host])
        np.testing.assert_array_equal(getattr(fused, field), expected, err_msg=field)
    # The check covers every rule: life-loss terminals, game ends, truncations, resets.
    discount = np.stack([h.discount for h in host])
    last, truncated = np.stack([h.last for h in host]), np.stack([h.truncated for h in host])
    assert np.any((discount == 0) & ~last), "no life loss in the stream"
    assert np.any(truncated), "no truncation in the stream"


def _config(loop, run_dir):
    c = rainbow.get_config("smoke")
    c.loop, c.run_dir, c.num_seeds = loop, str(run_dir), 2
    c.total_env_steps = 432  # 400 steps of random warm-up, then 16 update dispatches of 2 updates
    c.update_every = 2  # as the full configs, two updates per dispatch (unrolled on the CPU); smoke has one
    c.replay.capacity = 1000
    c.eval.every_steps = 0
    c.eval.final_episodes = 1
    c.eval.max_episode_frames = 400
    c.log.every_steps = 16  # the fused chunk
    c.log.tensorboard = c.log.progress_bar = False
    c.checkpoint.every_steps = 0  # the final checkpoint only
    return c


@pytest.mark.slow
def test_host_run_repeats_exactly_and_fused_run_equals_it(tmp_path):
    states = {}
    for loop in ("host", "fused"):
        trainer = Trainer(_config(loop, tmp_path / loop))
        assert (trainer.xla_envs is not None) == (loop == "fused")
        trainer.run()
        resume = _config("host", tmp_path / loop)
        resume.resume = True
        restorer = Trainer(resume)
        states[loop], _ = restorer.restore_latest()  # the fused run's checkpoint restores as any other
        restorer.envs.close()
    Trainer(_config("host", tmp_path / "again")).run()
    # The same config and seed again: every record the same, to the bit (timing fields aside).
    for seed in range(2):
        assert records_without_timing(tmp_path / "again", seed) == records_without_timing(tmp_path / "host", seed)
    # Agent 1 (seed + 1, as a one-seed run with that seed) is not a copy of agent 0.
    losses = [
        [r["loss/rl"] for r in records_without_timing(tmp_path / "host", seed) if "loss/rl" in r] for seed in range(2)
    ]
    assert losses[0] and losses[0] != losses[1]
    # Same seeds, same env stream and keys: every episode record, update count and evaluation is the
    # same; losses agree to float32 rounding (the fused program fuses the arithmetic differently).
    for seed in range(2):
        host = records_without_timing(tmp_path / "host", seed, run_info=False)
        fused = records_without_timing(tmp_path / "fused", seed, run_info=False)
        assert any(r["kind"] == "train_episode" for r in host), "no episode ended: the test would be vacuous"
        assert any(r["kind"] == "update" and "loss/rl" in r for r in host)
        assert len(host) == len(fused)
        for a, b in zip(host, fused, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], float):
                    assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (seed, key, a, b)
                else:
                    assert a[key] == b[key], (seed, key, a, b)
    host, fused = jax.tree.leaves(jax.device_get(states["host"])), jax.tree.leaves(jax.device_get(states["fused"]))
    for a, b in zip(host, fused, strict=True):
        if np.issubdtype(np.asarray(a).dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        else:  # replay frames, actions, indices, keys, counters
            np.testing.assert_array_equal(a, b)


def test_fused_loop_refuses_misaligned_intervals_before_any_env():
    c = rainbow.get_config("smoke")
    c.loop = "fused"
    c.log.every_steps = 300  # does not divide min_size 400, eval 600 or checkpoint 400
    with pytest.raises(ConfigError) as error:
        validate_atari_config(c)
    message = str(error.value)
    for name in ("replay.min_size=400", "checkpoint.every_steps=400", "log.every_steps=300", "config.loop='host'"):
        assert name in message
    c.log.every_steps = 200
    validate_atari_config(c)  # the smoke intervals are all multiples of 200
    c.loop = "scan"
    with pytest.raises(ConfigError, match="config.loop must be 'host' or 'fused'"):
        validate_atari_config(c)


def test_fused_loop_says_why_when_envpool_xla_is_unavailable(tmp_path, monkeypatch):
    import envpool.python.lax as envpool_lax

    def broken(self):
        raise RuntimeError("XLA is unavailable. To enable XLA please install a compatible jax.")

    monkeypatch.setattr(envpool_lax.XlaMixin, "xla", broken)
    c = rainbow.get_config("smoke")
    c.loop, c.run_dir = "fused", str(tmp_path / "run")
    with pytest.raises(ConfigError, match="needs envpool's XLA interface.*XLA is unavailable.*config.loop='host'"):
        Trainer(c)
    assert not os.path.exists(tmp_path / "run" / "metrics")  # nothing was started


def test_fused_loop_says_why_when_the_chunk_cannot_compile(tmp_path):
    """E.g. an envpool build without GPU kernels on a GPU: a ConfigError naming the way out, raised
    when the chunk is compiled, before it runs."""
    c = rainbow.get_config("smoke")
    c.loop, c.run_dir = "fused", str(tmp_path / "run")
    trainer = Trainer(c)

    def no_kernel(*args):
        raise RuntimeError("no registered implementation for custom call on platform CUDA")

    trainer.xla_envs._xla_step = no_kernel
    state = trainer.init_fn(trainer.seeds.keys())
    env = trainer.xla_envs.carry(trainer.envs.reset(), trainer.seeds.put_env_rows)
    with pytest.raises(ConfigError, match="could not compile envpool's XLA step.*CUDA.*config.loop='host'"):
        trainer.fused_chunk(state, env, 0)
    trainer.envs.close()
