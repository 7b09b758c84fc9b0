"""DeepMind Control Suite for SAC, from pixels or from states: one interface, two backends.

- "envpool" (default): N envs simulated and rendered in envpool's C++ thread pool.
- "dm_control": N `dm_control.suite` envs stepped one after another on the host, for machines
  where envpool cannot run. Same `DMCStepArrays`, same episode boundaries, same action repeat.

Things measured on envpool 1.2.5 that shape this module (dm_control 1.0.50, mujoco 3.17):

- envpool's DMC `frame_skip` is NOT an action repeat: it is dm_control's `n_sub_steps` (physics
  steps per control step, native value per domain: cartpole 1, finger 2, walker 10, ...), and the
  reward is computed once at the end of the control step, not summed. Passing frame_skip=2 to
  walker would shorten its control step from 25 ms to 5 ms. So both backends keep the native
  control step and repeat actions here, on the host, summing the `action_repeat` rewards
  (PlaNet's protocol). envpool steps a subset of envs in synchronous mode, which lets an env that
  ends inside a repeat stop there while the others finish theirs.
- envpool's `max_episode_steps` counts control steps (`env.step` calls), not physics steps. An
  episode is `EPISODE_CONTROL_STEPS` = 1000 control steps (dm_control's time limit for every suite
  task) = 1000 / action_repeat agent steps: cartpole_swingup with repeat 8 ends after 125 agent
  steps, walker_walk with repeat 2 after 500. When the repeat does not divide 1000 the episode is
  ceil(1000 / repeat) full agent steps (both backends), so a repeat is never cut short by the clock.
- envpool reports truncation with `discount = 1` and LAST; `discount = 0` only on a true
  termination (no PlaNet task terminates). Its reward on a FIRST step is uninitialised memory
  (values like 4.7e7 were seen), so it is zeroed here.
- Starts cannot be matched by seed: envpool draws initial states from a C++ `std::mt19937` seeded
  with `seed + i`, dm_control from `np.random.RandomState(seed + i)`. Each backend is deterministic
  given the seed, but the same seed gives different starts across backends. The physics are the
  same: copying envpool's start state into dm_control makes a fixed action sequence give the same
  rewards (tests/test_dmc_env.py measures the gap).

Frames are uint8 HWC (envpool's CHW is transposed on the host). Rendering needs an OpenGL
platform library loaded first (`psrl_jax.envs.gl.load_gl`); `make_dmc_envs` does that.

observation="state" gives the task's proprioceptive observation instead of a frame: its fields in
dm_control's order, flattened and concatenated into float32 [D] (cartpole: position 3 + velocity 2).
Nothing is rendered (envpool then needs no GL library; dm_control does, since importing it picks a
GL backend for the whole process). It is the "state SAC" reference of the DMC tables
and a check of everything but the pixel encoder (configs/sac.py:state).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
from typing import Any, Protocol

import envpool
import numpy as np

from psrl_jax.envs.atari import _num_threads
from psrl_jax.envs.gl import INSTALL_HINT, GLError, load_gl
from psrl_jax.errors import ConfigError

_DMC_ENTRY_MODULE = "envpool.mujoco.dmc"
_TASK_SUFFIX = "-v1"
_MAX_SUGGESTIONS = 5
EPISODE_CONTROL_STEPS = 1000  # dm_control's time limit for every suite task; envpool's max_episode_steps
BACKENDS = ("envpool", "dm_control")
OBSERVATIONS = ("pixels", "state")
_ENVPOOL_NON_OBSERVATION_FIELDS = ("env_id", "players", "elapsed_step")

# PlaNet's action repeats (Hafner et al. 2019), used by DrQ / CURL / PSRL for DMC; 4 otherwise.
PLANET_ACTION_REPEAT = {
    "finger_spin": 2,
    "walker_walk": 2,
    "cartpole_swingup": 8,
    "reacher_easy": 4,
    "cheetah_run": 4,
    "ball_in_cup_catch": 4,
}
DEFAULT_ACTION_REPEAT = 4
# envpool spec class 'DmcHumanoidCMUEnvSpec' -> 'humanoid_cmu', but dm_control spells it 'humanoid_CMU'.
_DOMAIN_SPELLING = {"humanoid_cmu": "humanoid_CMU"}


# --------------------------------------------------------------------------------------------
# Task names


@dataclasses.dataclass(frozen=True)
class DMCTask:
    name: str  # 'walker_walk': dm_control's '{domain}_{task}'
    domain: str  # 'walker' (dm_control.suite.load's domain_name)
    task: str  # 'walk'
    envpool_id: str  # 'WalkerWalk-v1'


def _normalise_name(name: str) -> str:
    """'Ball_In-Cup_Catch-v1' -> 'ballincupcatch': what users type varies in case and separators."""
    name = name.strip().lower()
    if name.endswith(_TASK_SUFFIX):
        name = name[: -len(_TASK_SUFFIX)]
    return "".join(ch for ch in name if ch.isalnum())


def _domain_from_spec_class(spec_class: str) -> str:
    """'DmcBallInCupEnvSpec' -> 'ball_in_cup' (a static parse: dm_control.suite is not imported,
    since importing it fixes the GL backend before `load_gl` has run)."""
    camel = spec_class.removeprefix("Dmc").removesuffix("EnvSpec")
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", camel).lower()
    return _DOMAIN_SPELLING.get(snake, snake)


@functools.cache
def _dmc_tasks() -> dict[str, DMCTask]:
    """Normalised name -> DMCTask for every envpool DMC task (reads the registry; no env is built)."""
    tasks = {}
    for task_id, (module, spec_class, kwargs) in envpool.registration.registry.specs.items():
        if module != _DMC_ENTRY_MODULE:
            continue
        domain = _domain_from_spec_class(spec_class)
        task = kwargs["task_name"]
        tasks[_normalise_name(task_id)] = DMCTask(f"{domain}_{task}", domain, task, task_id)
    return tasks


def resolve_task(name: str) -> DMCTask:
    """Maps 'walker_walk', 'walker-walk', 'WalkerWalk-v1', 'BALL_IN_CUP_CATCH' to a DMCTask.

    Cheap (reads envpool's registry only). Raises ValueError with up to 5 close matches.
    """
    tasks = _dmc_tasks()
    key = _normalise_name(name)
    if key in tasks:
        return tasks[key]
    close = difflib.get_close_matches(key, list(tasks), n=_MAX_SUGGESTIONS, cutoff=0.6)
    hint = f"; did you mean {', '.join(tasks[k].name for k in close)}?" if close else ""
    raise ValueError(
        f"unknown DMC task {name!r}{hint} ({len(tasks)} envpool DMC tasks exist, "
        "e.g. cartpole_swingup, walker_walk, cheetah_run)"
    )


def resolve_dmc_env(config):
    """(DMCTask, action repeat) of config.env, or a ConfigError naming the field. Cheap: reads
    envpool's registry only."""
    if "task" not in config.env:
        raise ConfigError(
            "this config names no env.task: an Atari config (env.game) is trained with launch/atari.py, "
            "not launch/dmc.py"
        )
    try:
        task = resolve_task(config.env.task)
    except ValueError as error:
        raise ConfigError(f"config.env.task: {error}") from error
    requested = config.env.action_repeat
    if requested is not None and (not isinstance(requested, int) or requested < 1):
        raise ConfigError(
            f"config.env.action_repeat must be an integer >= 1 (or unset for the task's default), got {requested!r}"
        )
    return task, action_repeat_for(task, 0 if requested is None else requested)


def action_repeat_for(task: DMCTask, requested: int) -> int:
    """`requested` agent-step repeat, or the task's PlaNet default when 0 (4 for tasks PlaNet lacks)."""
    if requested < 0:
        raise ValueError(f"action_repeat must be >= 0 (0 = the task's default), got {requested}")
    if requested == 0:
        return PLANET_ACTION_REPEAT.get(task.name, DEFAULT_ACTION_REPEAT)
    return requested


def episode_agent_steps(action_repeat: int) -> int:
    """Agent steps per (untruncated-by-termination) episode: ceil(1000 / action_repeat)."""
    return math.ceil(EPISODE_CONTROL_STEPS / action_repeat)


# --------------------------------------------------------------------------------------------
# Step results


@dataclasses.dataclass
class DMCStepArrays:
    """One synchronous agent step of N envs as host arrays, leading axis = env index."""

    frame: np.ndarray  # uint8 [N, H, W, 3] (float32 [N, D] for states): after the repeat's last control step
    reward: np.ndarray  # float32 [N]: sum over the repeat's control steps; 0 on FIRST
    discount: np.ndarray  # float32 [N]: 0 only on a true termination; the time limit keeps 1
    first: np.ndarray  # bool [N]: first frame of an episode (no transition arrives here)
    last: np.ndarray  # bool [N]: episode over; the next step() resets this env and returns FIRST
    truncated: np.ndarray  # bool [N]: last and not terminated (the time limit)

    @property
    def raw_reward(self) -> np.ndarray:
        """The score (envs/episodes.py): DMC rewards are never clipped."""
        return self.reward


def _first_step(frames: np.ndarray) -> DMCStepArrays:
    n = frames.shape[0]
    return DMCStepArrays(
        frame=frames,
        reward=np.zeros(n, np.float32),
        discount=np.ones(n, np.float32),
        first=np.ones(n, bool),
        last=np.zeros(n, bool),
        truncated=np.zeros(n, bool),
    )


class DMCEnvs(Protocol):
    task: DMCTask
    num_envs: int
    action_repeat: int
    action_dim: int
    action_low: np.ndarray  # float32 [A]
    action_high: np.ndarray  # float32 [A]
    observation: str  # "pixels" or "state"
    frame_shape: tuple[int, ...]  # (H, W, 3) for pixels, (D,) for states
    frame_dtype: Any  # np.uint8 for pixels, np.float32 for states

    def reset(self) -> DMCStepArrays: ...

    def step(self, actions: np.ndarray) -> DMCStepArrays: ...

    def close(self) -> None: ...


class _DMCEnvsBase:
    """Shared bookkeeping: action checks, which envs must reset, control-step clock."""

    backend = ""

    def __init__(self, task, num_envs, action_repeat, image_size, camera_id, observation="pixels"):
        self.task = task
        self.num_envs = num_envs
        self.action_repeat = action_repeat
        self.observation = observation
        self.pixels = observation == "pixels"
        # States: (D,) is set by the backend once it knows the task's observation spec.
        self.frame_shape = (image_size, image_size, 3) if self.pixels else ()
        self.frame_dtype = np.uint8 if self.pixels else np.float32
        self.camera_id = camera_id
        self.max_agent_steps = episode_agent_steps(action_repeat)
        self._needs_reset = np.ones(num_envs, bool)  # step() before reset() resets

    def _set_action_bounds(self, low: np.ndarray, high: np.ndarray) -> None:
        self.action_low = np.asarray(low, np.float32).reshape(-1)
        self.action_high = np.asarray(high, np.float32).reshape(-1)
        self.action_dim = int(self.action_low.shape[0])

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        """float64 [N, A] clipped to the bounds (MuJoCo clamps ctrl anyway; clipping here keeps the
        two backends identical whatever the policy emits)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, self.action_dim):
            raise ValueError(f"actions must have shape {(self.num_envs, self.action_dim)}, got {actions.shape}")
        return np.clip(actions, self.action_low, self.action_high)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# envpool backend

_FIRST, _LAST = 0, 2


class EnvpoolDMCEnvs(_DMCEnvsBase):
    backend = "envpool"

    def __init__(self, task, num_envs, seed, action_repeat, image_size, camera_id, num_threads, observation="pixels"):
        super().__init__(task, num_envs, action_repeat, image_size, camera_id, observation)
        rendering = dict(render_width=image_size, render_height=image_size, render_camera_id=camera_id)
        self._env = envpool.make(
            task.envpool_id,
            env_type="dm",
            num_envs=num_envs,
            batch_size=num_envs,  # synchronous
            seed=seed,  # env i is seeded with seed + i
            num_threads=_num_threads(num_threads, num_envs),
            from_pixels=self.pixels,
            # native frame_skip (= dm_control's n_sub_steps): see the module docstring
            max_episode_steps=self.max_agent_steps * action_repeat,  # control steps
            **(rendering if self.pixels else {}),
        )
        spec = self._env.action_spec()
        self._set_action_bounds(
            np.broadcast_to(spec.minimum, spec.shape[-1:]), np.broadcast_to(spec.maximum, spec.shape[-1:])
        )
        if not self.pixels:
            # envpool lists the task's observation fields in dm_control's order, after its own.
            obs_spec = self._env.observation_spec()
            self._state_fields = [f for f in obs_spec._fields if f not in _ENVPOOL_NON_OBSERVATION_FIELDS]
            dim = sum(int(np.prod(getattr(obs_spec, f).shape)) for f in self._state_fields)
            self.frame_shape = (dim,)
        self._frames = np.zeros((num_envs, *self.frame_shape), self.frame_dtype)

    def _store_frames(self, ts) -> np.ndarray:
        """Writes the returned envs' frames (CHW -> HWC) or states into the per-env buffer; returns their ids."""
        env_id = np.asarray(ts.observation.env_id)
        if self.pixels:
            self._frames[env_id] = np.asarray(ts.observation.pixels).transpose(0, 2, 3, 1)
        else:
            fields = [np.asarray(getattr(ts.observation, f)).reshape(env_id.shape[0], -1) for f in self._state_fields]
            self._frames[env_id] = np.concatenate(fields, axis=1)
        return env_id

    def reset(self) -> DMCStepArrays:
        ts = self._env.reset()
        self._store_frames(ts)
        self._needs_reset[:] = False
        return _first_step(self._frames.copy())

    def step(self, actions: np.ndarray) -> DMCStepArrays:
        actions = self._check_actions(actions)
        n = self.num_envs
        reward = np.zeros(n, np.float64)
        discount = np.ones(n, np.float32)
        first = self._needs_reset.copy()
        last = np.zeros(n, bool)
        active = np.ones(n, bool)  # still inside this agent step's repeat
        for _ in range(self.action_repeat):
            ids = np.flatnonzero(active).astype(np.int32)
            if ids.size == 0:
                break
            ts = self._env.step(actions[ids], ids)
            env_id = self._store_frames(ts)
            step_type = np.asarray(ts.step_type)
            is_first = step_type == _FIRST
            is_last = step_type == _LAST
            # envpool auto-resets an env stepped after LAST: that call is the reset (no physics), and
            # its FIRST frame is this agent step's result, so the env sits out the rest of the repeat.
            reward[env_id] += np.where(is_first, 0.0, np.asarray(ts.reward, np.float64))
            discount[env_id] = np.where(is_last, np.asarray(ts.discount, np.float32), 1.0)
            last[env_id] |= is_last
            active[env_id] = ~(is_first | is_last)
        self._needs_reset = last.copy()
        terminated = last & (discount == 0.0)
        return DMCStepArrays(
            frame=self._frames.copy(),
            reward=reward.astype(np.float32),
            discount=discount,
            first=first,
            last=last,
            truncated=last & ~terminated,
        )

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------------------------
# dm_control backend


def prepare_rendering(backend: str, observation: str, gl: str = "auto") -> None:
    """What rendering needs, before any env is built (a trainer calls it before it creates its run
    directory, so a missing GL library leaves nothing behind): an OpenGL platform when pixels are
    rendered or dm_control is used (importing dm_control fixes its GL backend), and dm_control's
    suite importable on it. Raises GLError naming the packages otherwise."""
    if observation == "pixels" or backend == "dm_control":
        load_gl(gl)
    if backend == "dm_control":
        _dm_control_suite()


def _dm_control_suite():
    try:
        from dm_control import suite  # after load_gl: the import picks the GL backend
    except (AttributeError, ImportError, OSError) as error:
        # PyOpenGL finds no usable libEGL / libOSMesa by name (envpool's private libEGL, which
        # load_gl can use, does not serve dm_control): a GL setup problem, not a bug.
        raise GLError(
            f"dm_control could not set up MuJoCo rendering with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} "
            f"({type(error).__name__}: {error}): the OpenGL libraries it loads by name are missing or unusable; "
            f"{INSTALL_HINT}; with OSMesa only, pass --config.env.gl=osmesa"
        ) from error
    return suite


class DMControlEnvs(_DMCEnvsBase):
    backend = "dm_control"

    def __init__(self, task, num_envs, seed, action_repeat, image_size, camera_id, observation="pixels"):
        super().__init__(task, num_envs, action_repeat, image_size, camera_id, observation)
        suite = _dm_control_suite()

        # No dm_control time limit: the clock below ends episodes exactly where envpool does.
        self._envs = [
            suite.load(task.domain, task.task, task_kwargs={"random": seed + i, "time_limit": float("inf")})
            for i in range(num_envs)
        ]
        spec = self._envs[0].action_spec()
        self._set_action_bounds(spec.minimum, spec.maximum)
        self._agent_steps = np.zeros(num_envs, np.int64)
        if not self.pixels:
            obs_spec = self._envs[0].observation_spec()
            self.frame_shape = (sum(int(np.prod(s.shape)) for s in obs_spec.values()),)

    def _render(self, i: int) -> np.ndarray:
        h, w, _ = self.frame_shape
        return self._envs[i].physics.render(height=h, width=w, camera_id=self.camera_id)

    def _observe(self, i: int, ts) -> np.ndarray:
        """Env i's frame, or its flattened observation dict (dm_control's key order) for states."""
        if self.pixels:
            return self._render(i)
        return np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in ts.observation.values()])

    def reset(self) -> DMCStepArrays:
        timesteps = [env.reset() for env in self._envs]
        self._agent_steps[:] = 0
        self._needs_reset[:] = False
        return _first_step(np.stack([self._observe(i, ts) for i, ts in enumerate(timesteps)]))

    def step(self, actions: np.ndarray) -> DMCStepArrays:
        actions = self._check_actions(actions)
        n = self.num_envs
        frames = np.empty((n, *self.frame_shape), self.frame_dtype)
        reward = np.zeros(n, np.float64)
        discount = np.ones(n, np.float32)
        first = self._needs_reset.copy()
        last = np.zeros(n, bool)
        for i, env in enumerate(self._envs):
            if first[i]:
                ts = env.reset()
                self._agent_steps[i] = 0
            else:
                for _ in range(self.action_repeat):
                    ts = env.step(actions[i])
                    reward[i] += ts.reward or 0.0
                    if ts.last():  # a true termination (the time limit is ours)
                        discount[i] = ts.discount
                        last[i] = True
                        break
                self._agent_steps[i] += 1
                last[i] |= self._agent_steps[i] >= self.max_agent_steps
            frames[i] = self._observe(i, ts)
        self._needs_reset = last.copy()
        terminated = last & (discount == 0.0)
        return DMCStepArrays(
            frame=frames,
            reward=reward.astype(np.float32),
            discount=discount,
            first=first,
            last=last,
            truncated=last & ~terminated,
        )

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []


# --------------------------------------------------------------------------------------------
# Construction


def _check_arguments(num_envs, seed, action_repeat, image_size, backend, camera_id, observation="pixels"):
    """Fails early with a readable message, before any env (or GL context) is built."""
    problems = []
    if observation not in OBSERVATIONS:
        problems.append(f"observation must be one of {', '.join(OBSERVATIONS)}, got {observation!r}")
    if num_envs < 1:
        problems.append(f"num_envs must be >= 1, got {num_envs}")
    if action_repeat < 1:
        problems.append(f"action_repeat must be >= 1 (resolve 0 with action_repeat_for), got {action_repeat}")
    if image_size < 1:
        problems.append(f"image_size must be >= 1, got {image_size}")
    if backend not in BACKENDS:
        problems.append(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if camera_id < 0:
        problems.append(f"camera_id must be >= 0, got {camera_id}")
    # envpool seeds env i with seed + i as an int32; dm_control's RandomState needs < 2**32.
    if not 0 <= seed <= np.iinfo(np.int32).max - max(num_envs, 1):
        problems.append(f"seed must be in [0, 2**31 - 1 - num_envs], got {seed}")
    if problems:
        raise ValueError("invalid DMC environment settings: " + "; ".join(problems))


def make_dmc_envs(
    task: str,
    num_envs: int,
    seed: int,
    *,
    action_repeat: int,
    image_size: int = 100,
    backend: str = "envpool",
    camera_id: int = 0,
    num_threads: int = 0,
    gl: str = "auto",
    observation: str = "pixels",
) -> EnvpoolDMCEnvs | DMControlEnvs:
    """Builds `num_envs` DMC envs of `task` (any spelling `resolve_task` accepts).

    `action_repeat` >= 1 control steps per agent step (use `action_repeat_for(task, 0)` for PlaNet's
    default); frames are `image_size`^2 RGB from `camera_id`, or with observation="state" the
    flattened proprioceptive observation. Env i is seeded with `seed + i`. `num_threads` (envpool
    only) 0 = one per core. Loads an OpenGL platform (`gl`) first, unless envpool runs without rendering.
    """
    resolved = resolve_task(task)
    _check_arguments(num_envs, seed, action_repeat, image_size, backend, camera_id, observation)
    prepare_rendering(backend, observation, gl)
    if backend == "envpool":
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        return EnvpoolDMCEnvs(resolved, num_envs, seed, action_repeat, image_size, camera_id, num_threads, observation)
    return DMControlEnvs(resolved, num_envs, seed, action_repeat, image_size, camera_id, observation)
