"""What the trainer needs to know about a domain: its envs, its agent and its step unit.

Two domains: Atari 100k (envpool, Rainbow, env steps counted as agent steps) and the DeepMind
Control Suite (envpool or dm_control, SAC, env steps counting action repeats). `for_config` is the
one place that tells them apart. A new domain is a class with the same attributes and methods.
"""

import jax.numpy as jnp

from psrl_jax.agents.rainbow import RainbowAgent
from psrl_jax.agents.sac import SACAgent, learning_rate
from psrl_jax.config import ConfigError, check_atari_config, check_dmc_config, is_dmc_config
from psrl_jax.envs.atari import AtariEnvs, make_atari_envs
from psrl_jax.envs.atari_xla import XlaAtariEnvs
from psrl_jax.envs.dmc import make_dmc_envs, prepare_rendering
from psrl_jax.replay.sequence_replay import make_sequence_replay


class AtariDomain:
    """Atari through envpool with a Rainbow agent (+ PSRL). An env step is an agent step (4 frames)."""

    action_repeat = 1  # env steps per agent step: the Atari 100k budget counts agent steps

    def __init__(self, config):
        self.task_id = check_atari_config(config)  # cheap checks first: no env, no compile
        self.name = self.task_id.split("-")[0]
        self.loop = config.loop  # "host" or "fused" (envpool's XLA step inside the compiled loop)
        self.config = config
        self.info = {"task_id": self.task_id}

    def make_envs(self, num_envs: int, seed: int, train: bool) -> AtariEnvs:
        """Training envs (clipped rewards and life-loss terminals as configured) or evaluation envs
        (full games, raw scores, the evaluation episode cap)."""
        env = self.config.env
        cap = None if train else self.config.eval.max_episode_frames
        pool = make_atari_envs(env, num_envs, seed=seed, train=train, max_episode_frames=cap)
        return AtariEnvs(pool, terminal_on_life_loss=train and env.terminal_on_life_loss, image_size=env.image_size)

    def make_agent(self, envs: AtariEnvs) -> RainbowAgent:
        observation_shape = (self.config.env.frame_stack, *envs.frame_shape)
        return RainbowAgent.from_config(self.config, envs.num_actions, observation_shape)

    def make_replay(self, envs: AtariEnvs, capacity: int):
        return make_sequence_replay(self.config, envs.frame_shape, capacity=capacity)

    def xla_envs(self, envs: AtariEnvs, num_seeds: int) -> XlaAtariEnvs:
        env = self.config.env
        return XlaAtariEnvs(envs, num_seeds, env.envs_per_seed, env.terminal_on_life_loss)


class DMCDomain:
    """DeepMind Control from pixels (or states) with a SAC agent (+ PSRL). Env steps count action
    repeats, the unit DMC results are reported in; replay sizes count agent steps."""

    loop = "host"

    def __init__(self, config):
        self.task, repeat = check_dmc_config(config)  # cheap checks first: no env, no compile
        prepare_rendering(config.env.backend, config.env.observation, config.env.gl)
        self.name = self.task.name
        self.action_repeat = repeat
        self.config = config
        self.info = {
            "task": self.task.name,
            "action_repeat": repeat,
            "learning_rate": learning_rate(config),
            "backend": config.env.backend,
        }

    def make_envs(self, num_envs: int, seed: int, train: bool):
        del train  # DMC's training and evaluation envs are the same
        env = self.config.env
        return make_dmc_envs(
            env.task,
            num_envs,
            seed,
            action_repeat=self.action_repeat,
            image_size=env.image_size,
            backend=env.backend,
            camera_id=env.camera_id,
            num_threads=env.num_threads,
            gl=env.gl,
            observation=env.observation,
        )

    def make_agent(self, envs) -> SACAgent:
        observation_shape = (self.config.env.frame_stack, *envs.frame_shape)
        return SACAgent.from_config(self.config, int(envs.action_dim), observation_shape)

    def make_replay(self, envs, capacity: int):
        action_shape = (int(envs.action_dim),)
        return make_sequence_replay(
            self.config, envs.frame_shape, jnp.float32, action_shape, frame_dtype=envs.frame_dtype, capacity=capacity
        )

    def xla_envs(self, envs, num_seeds: int):
        raise ConfigError("the fused loop steps envpool's Atari envs only; DMC runs use the host loop")


def for_config(config):
    """The config's domain: DMC when it names env.task, Atari otherwise (AtariDomain says so when it
    names neither)."""
    return DMCDomain(config) if is_dmc_config(config) else AtariDomain(config)
