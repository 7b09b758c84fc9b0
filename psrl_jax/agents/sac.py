"""Soft actor-critic from pixels (CURL / SAC-AE recipe, Table 2), optionally with PSRL's
paired-similarity losses on the critic's encoder (config.psrl; losses/psrl.py).

Pure functions over an explicit `SACState`; the trainer vmaps `init`, `act` and `update_many`
over a leading seed axis, as for Rainbow. One update:

  1. critic (+ PSRL): the online encoder on the augmented o_k; twin Q and the soft target from the
     critic target on o_{k+n} with a' from the actor on the (detached) online maps of o_{k+n}. The
     PSRL loss is added to the critic's, so it trains the encoder and the PSRL modules with the
     critic's optimiser (ours; CURL gives its auxiliary loss its own optimiser at the same rate).
     DrQ's averaging (`target_augmentations` K, `q_augmentations` M): the soft target is the mean of
     K targets, each on its own augmented view of o_{k+n} with its own a'; the critic loss is the
     *sum* of the twin-Q losses on M views of o_k, as DrQ's `update_critic` adds them. The actor and
     PSRL read the first view. K = M = 1 is CURL's update, unchanged.
  2. actor and temperature, every `actor_update_every` updates: the actor reads the maps of the
     *updated* encoder, detached (CURL: "actor uses detached encoder features"); the temperature
     has its own Adam (beta1 0.5, Table 2).
  3. critic target, every `critic_target_update_every` updates: EMA with critic_tau for the Q heads
     and encoder_tau for the encoder, conv and trunk (CURL's `critic.encoder` holds both);
     PSRL's EMA target every update.
  Steps 2 and 3 are due on updates 1, 1 + every, ...: CURL and DrQ run them when the agent step
  is a multiple of `every`, and their first update is at agent step 1000.

Steps that are not due still run under jit (the update is one static graph) and are discarded with
`jnp.where`, so actor, temperature and targets change exactly when they are due.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from psrl_jax.losses import sac as sac_losses
from psrl_jax.losses.psrl import PSRLAuxiliary, PSRLHyperparams
from psrl_jax.networks.q_network import compute_dtype
from psrl_jax.networks.sac_networks import SACActor, SACCritic, tanh_gaussian
from psrl_jax.ops.augment import augment_pixels, center_crop, to_float
from psrl_jax.replay.sequence_replay import SequenceBatch


@flax.struct.dataclass
class SACState:
    critic_params: Any  # {"params": {"torso", "trunk", "q1", "q2"}}
    critic_target: Any  # EMA copy of critic_params (the soft target's networks)
    actor_params: Any  # {"params": {"trunk", "mlp"}}; the conv encoder is the critic's
    log_alpha: jax.Array  # float32 [], log of the temperature
    aux_params: Any  # PSRL modules ({} without PSRL)
    ema_params: Any  # PSRL target side: EMA of the encoder and the projection ({} without PSRL)
    batch_stats: Any  # BatchNorm statistics of the correspondence module ({} without PSRL)
    critic_opt_state: Any  # Adam over {"critic": critic_params, "aux": aux_params}
    actor_opt_state: Any
    alpha_opt_state: Any
    key: jax.Array
    update_step: jax.Array  # int32 [], gradient updates so far


def learning_rate(config) -> float:
    """Table 2's learning rate for config.env.task (2e-4 on cheetah_run, else 1e-3)."""
    per_task = config.agent.learning_rate_per_task
    return float(per_task[config.env.task]) if config.env.task in per_task else float(config.agent.learning_rate)


def _where(flag, new, old):
    return jax.tree.map(lambda n, o: jnp.where(flag, n, o), new, old)


@dataclasses.dataclass(frozen=True)
class SACHyperparams:
    """config.agent (configs/sac.py documents every field) and the pixel facts of config.env, read once."""

    pixels: bool  # rendered frames (else proprioceptive states: no encoder, no augmentation)
    encoder: str  # "stacked" or "framewise" from pixels, "state" from states
    encoder_channels: tuple
    encoder_strides: tuple
    latent_dim: int
    hidden: tuple
    compute_dtype: Any
    weight_init: str
    trunk_tanh: bool
    log_std_min: float
    log_std_max: float
    learning_rate: float  # encoder, critic and actor (the task's, config.agent.learning_rate_per_task)
    adam_b1: float
    adam_b2: float
    alpha_learning_rate: float
    alpha_b1: float
    alpha_b2: float
    init_temperature: float
    target_entropy_per_dim: float
    critic_tau: float
    encoder_tau: float
    critic_target_update_every: int
    actor_update_every: int
    target_augmentations: int  # DrQ's K
    q_augmentations: int  # DrQ's M
    crop_size: int
    augment: bool
    translate_pad: int

    @classmethod
    def from_config(cls, config) -> "SACHyperparams":
        a, pixels = config.agent, config.env.observation == "pixels"
        return cls(
            pixels=pixels,
            encoder=a.encoder if pixels else "state",
            encoder_channels=tuple(a.encoder_channels),
            encoder_strides=tuple(a.encoder_strides),
            latent_dim=int(a.latent_dim),
            hidden=tuple(a.hidden),
            compute_dtype=compute_dtype(a),
            weight_init=a.weight_init,
            trunk_tanh=bool(a.trunk_tanh),
            log_std_min=float(a.log_std_min),
            log_std_max=float(a.log_std_max),
            learning_rate=learning_rate(config),
            adam_b1=float(a.adam_b1),
            adam_b2=float(a.adam_b2),
            alpha_learning_rate=float(a.alpha_learning_rate),
            alpha_b1=float(a.alpha_b1),
            alpha_b2=float(a.alpha_b2),
            init_temperature=float(a.init_temperature),
            target_entropy_per_dim=float(a.target_entropy_per_dim),
            critic_tau=float(a.critic_tau),
            encoder_tau=float(a.encoder_tau),
            critic_target_update_every=int(a.critic_target_update_every),
            actor_update_every=int(a.actor_update_every),
            target_augmentations=int(a.target_augmentations),
            q_augmentations=int(a.q_augmentations),
            crop_size=int(config.env.crop_size),
            augment=bool(a.augmentation.enabled),
            translate_pad=int(a.augmentation.translate_pad),
        )


@dataclasses.dataclass(frozen=True)
class SACAgent:
    """The static parts of the agent (hyperparameters, networks, the PSRL auxiliary or None); every
    method is pure."""

    hp: SACHyperparams
    action_dim: int
    observation_shape: tuple  # (frame_stack, H, W, 3): the rendered (uncropped) stack; states: (frame_stack, D)
    psrl_hp: PSRLHyperparams | None = None  # None: no PSRL term is on

    @classmethod
    def from_config(cls, config, action_dim: int, observation_shape: tuple) -> "SACAgent":
        hp, psrl_hp = SACHyperparams.from_config(config), PSRLHyperparams.from_config(config)
        return cls(hp, action_dim, observation_shape, psrl_hp)

    @property
    def pixels(self) -> bool:
        return self.hp.pixels

    @property
    def critic(self) -> SACCritic:
        hp = self.hp
        return SACCritic(
            encoder=hp.encoder,
            encoder_channels=hp.encoder_channels,
            encoder_strides=hp.encoder_strides,
            latent_dim=hp.latent_dim,
            hidden=hp.hidden,
            dtype=hp.compute_dtype,
            weight_init=hp.weight_init,
            trunk_tanh=hp.trunk_tanh,
        )

    @property
    def actor(self) -> SACActor:
        hp = self.hp
        return SACActor(
            action_dim=self.action_dim,
            encoder=hp.encoder,
            latent_dim=hp.latent_dim,
            hidden=hp.hidden,
            log_std_min=hp.log_std_min,
            log_std_max=hp.log_std_max,
            dtype=hp.compute_dtype,
            weight_init=hp.weight_init,
            trunk_tanh=hp.trunk_tanh,
        )

    @property
    def psrl(self) -> PSRLAuxiliary | None:
        if self.psrl_hp is None:
            return None
        return PSRLAuxiliary.build(self.psrl_hp, self.critic, num_actions=0, action_dim=self.action_dim)

    @property
    def critic_optimizer(self):
        return optax.adam(self.hp.learning_rate, b1=self.hp.adam_b1, b2=self.hp.adam_b2)

    @property
    def actor_optimizer(self):
        return self.critic_optimizer

    @property
    def alpha_optimizer(self):
        return optax.adam(self.hp.alpha_learning_rate, b1=self.hp.alpha_b1, b2=self.hp.alpha_b2)

    @property
    def target_entropy(self) -> float:
        return self.hp.target_entropy_per_dim * self.action_dim

    def init(self, key: jax.Array) -> SACState:
        key, k_critic, k_actor, k_aux = jax.random.split(key, 4)
        frames, crop = self.observation_shape[0], self.hp.crop_size
        if self.pixels:
            dummy = jnp.zeros((1, frames, crop, crop, self.observation_shape[-1]), jnp.float32)
        else:
            dummy = jnp.zeros((1, *self.observation_shape), jnp.float32)
        critic_params = self.critic.init(k_critic, dummy, jnp.zeros((1, self.action_dim)))
        maps = self.critic.apply(critic_params, dummy, method="encode")
        actor_params = self.actor.init(k_actor, maps)
        aux_params, ema_params, batch_stats = {}, {}, {}
        if self.psrl is not None:
            maps, skip = self.critic.apply(critic_params, dummy, return_skip=True, method="encode")
            aux_params, ema_params, batch_stats = self.psrl.init(k_aux, critic_params, maps.shape[2:], skip.shape[2:])
        log_alpha = jnp.asarray(np.log(self.hp.init_temperature), jnp.float32)
        return SACState(
            critic_params=critic_params,
            critic_target=critic_params,
            actor_params=actor_params,
            log_alpha=log_alpha,
            aux_params=aux_params,
            ema_params=ema_params,
            batch_stats=batch_stats,
            critic_opt_state=self.critic_optimizer.init({"critic": critic_params, "aux": aux_params}),
            actor_opt_state=self.actor_optimizer.init(actor_params),
            alpha_opt_state=self.alpha_optimizer.init(log_alpha),
            key=key,
            update_step=jnp.zeros((), jnp.int32),
        )

    def _policy(self, actor_params, maps):
        mean, log_std = self.actor.apply(actor_params, maps)
        return tanh_gaussian(mean, log_std), mean

    def act(self, state: SACState, obs_uint8, key, explore: bool):
        """Actions in [-1, 1]^A for rendered stacks uint8 [N, F, H, W, 3] (centre-cropped here), or
        state stacks float32 [N, F, D]: a sample of the policy when training (`explore`), tanh of its
        mean when evaluating."""
        obs = to_float(center_crop(obs_uint8, self.hp.crop_size)) if self.pixels else obs_uint8.astype(jnp.float32)
        maps = self.critic.apply(state.critic_params, obs, method="encode")
        policy, mean = self._policy(state.actor_params, maps)
        return policy.sample(seed=key) if explore else jnp.tanh(mean)

    def random_actions(self, key, n: int):
        """The warm-up's uniform actions in the [-1, 1] box of every DMC task, float32 [n, A]."""
        return jax.random.uniform(key, (n, self.action_dim), minval=-1.0, maxval=1.0)

    def _augment(self, key, obs_uint8):
        if not self.pixels:  # states are not augmented
            return obs_uint8.astype(jnp.float32)
        if self.hp.augment:
            return augment_pixels(key, obs_uint8, self.hp.crop_size, self.hp.translate_pad)
        return to_float(center_crop(obs_uint8, self.hp.crop_size))

    def soft_target(self, state: SACState, batch: SequenceBatch, next_views, key):
        """[B] soft Bellman target averaged over the K views `next_views` [K, B, ...] of o_{k+n}: a'
        from the current actor on the online encoder's detached maps of each view, Q' from the
        critic target on that view (DrQ's `update_critic`)."""
        critic = self.critic
        size = next_views.shape[1]
        next_obs = next_views.reshape((-1,) + next_views.shape[2:])  # [K * B, ...], view-major
        next_maps = critic.apply(state.critic_params, next_obs, method="encode")
        policy, _ = self._policy(state.actor_params, next_maps)
        next_action, next_log_prob = policy.sample_and_log_prob(seed=key)
        next_q1, next_q2 = critic.apply(state.critic_target, next_obs, next_action)
        targets = sac_losses.soft_target(
            batch.n_step_return,
            batch.bootstrap_discount,
            next_q1.reshape(-1, size),
            next_q2.reshape(-1, size),
            next_log_prob.reshape(-1, size),
            jnp.exp(state.log_alpha),
        )
        return jnp.mean(targets, axis=0)

    def critic_loss(self, trainable, state: SACState, batch: SequenceBatch, obs_views, future_obs, target):
        """Twin-Q loss on the M views `obs_views` [M, B, ...] (summed over views, as DrQ) plus, when on,
        the PSRL loss on the first view. Returns (loss, (new batch_stats, metrics))."""
        critic = self.critic
        views, size = obs_views.shape[:2]
        obs = obs_views.reshape((views * size,) + obs_views.shape[2:])
        if self.psrl is not None:
            q_maps, skip = critic.apply(trainable["critic"], obs, return_skip=True, method="encode")
            maps, skip = q_maps[:size], skip[:size]  # PSRL reads the first view
        else:
            q_maps = maps = critic.apply(trainable["critic"], obs, method="encode")
        actions = jnp.tile(batch.action, (views, 1))
        q1, q2 = critic.apply(trainable["critic"], q_maps, actions, method="q_from_maps")
        q1, q2 = q1.reshape(views, size), q2.reshape(views, size)
        valid = batch.valid
        per_sample = jnp.sum(sac_losses.critic_loss(q1, q2, target), axis=0)
        total = sac_losses.masked_mean(per_sample, valid)
        metrics = {"loss/critic": total, "q/mean": sac_losses.masked_mean(0.5 * (q1[0] + q2[0]), valid)}
        batch_stats = state.batch_stats
        if self.psrl is not None:
            psrl_total, batch_stats, psrl_metrics = self.psrl.loss(
                trainable["aux"],
                state.batch_stats,
                state.ema_params,
                online_maps=maps,
                online_skip=skip,
                future_obs=future_obs,
                batch=batch,
                encode_online=lambda o: critic.apply(trainable["critic"], o, return_skip=True, method="encode"),
            )
            total = total + psrl_total
            metrics.update(psrl_metrics)  # with "loss/psrl": what the update adds
        return total, (batch_stats, metrics)

    def update(self, state: SACState, batch: SequenceBatch):
        """One SAC (+ PSRL) update. Returns (new state, metrics)."""
        hp = self.hp
        key, k_aug, k_aug_next, k_next, k_actor, k_psrl = jax.random.split(state.key, 6)
        critic = self.critic
        alpha = jnp.exp(state.log_alpha)

        future_obs = None
        if self.psrl is not None:
            obs, future_obs = self.psrl.augment_with_future(self._augment, k_aug, k_psrl, batch.obs, batch.future_obs)
        else:
            obs = self._augment(k_aug, batch.obs)
        # Views 1.. of o_k and o_{k+n} (DrQ's M and K) are independent augmentations; view 0 keeps the
        # keys of a single-view update.
        obs_views = jnp.stack(
            [obs] + [self._augment(jax.random.fold_in(k_aug, m), batch.obs) for m in range(1, hp.q_augmentations)]
        )
        next_views = jnp.stack(
            [
                self._augment(k_aug_next if k == 0 else jax.random.fold_in(k_aug_next, k), batch.next_obs)
                for k in range(hp.target_augmentations)
            ]
        )
        with jax.named_scope("soft_target"):
            target = self.soft_target(state, batch, next_views, k_next)

        with jax.named_scope("critic"):
            trainable = {"critic": state.critic_params, "aux": state.aux_params}
            grads, (batch_stats, metrics) = jax.grad(self.critic_loss, has_aux=True)(
                trainable, state, batch, obs_views, future_obs, target
            )
            updates, critic_opt_state = self.critic_optimizer.update(grads, state.critic_opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
        critic_params, aux_params = trainable["critic"], trainable["aux"]

        step = state.update_step + 1
        with jax.named_scope("actor"):
            maps = jax.lax.stop_gradient(critic.apply(critic_params, obs, method="encode"))

            def actor_loss(actor_params):
                policy, _ = self._policy(actor_params, maps)
                action, log_prob = policy.sample_and_log_prob(seed=k_actor)
                q1, q2 = critic.apply(critic_params, maps, action, method="q_from_maps")
                return sac_losses.masked_mean(sac_losses.actor_loss(log_prob, q1, q2, alpha), batch.valid), log_prob

            (loss_actor, log_prob), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(state.actor_params)
            updates, actor_opt_state = self.actor_optimizer.update(actor_grads, state.actor_opt_state)
            actor_params = optax.apply_updates(state.actor_params, updates)

            def alpha_loss(log_alpha):
                per_sample = sac_losses.temperature_loss(log_alpha, log_prob, self.target_entropy)
                return sac_losses.masked_mean(per_sample, batch.valid)

            loss_alpha, alpha_grad = jax.value_and_grad(alpha_loss)(state.log_alpha)
            updates, alpha_opt_state = self.alpha_optimizer.update(alpha_grad, state.alpha_opt_state)
            log_alpha = optax.apply_updates(state.log_alpha, updates)
            actor_due = state.update_step % hp.actor_update_every == 0  # updates 1, 3, ... (CURL, DrQ)
            actor_params, actor_opt_state, log_alpha, alpha_opt_state = _where(
                actor_due,
                (actor_params, actor_opt_state, log_alpha, alpha_opt_state),
                (state.actor_params, state.actor_opt_state, state.log_alpha, state.alpha_opt_state),
            )

        target_due = state.update_step % hp.critic_target_update_every == 0
        new_target = {
            "params": {
                name: optax.incremental_update(
                    critic_params["params"][name],
                    state.critic_target["params"][name],
                    hp.encoder_tau if name in ("torso", "trunk") else hp.critic_tau,
                )
                for name in critic_params["params"]
            }
        }
        critic_target = _where(target_due, new_target, state.critic_target)
        ema_params = state.ema_params
        if self.psrl is not None:
            ema_params = self.psrl.target_update(critic_params, aux_params, ema_params)

        metrics = dict(
            metrics,
            **{
                "loss/actor": loss_actor,
                "loss/temperature": loss_alpha,
                "alpha": jnp.exp(log_alpha),
                "policy/entropy": -sac_losses.masked_mean(log_prob, batch.valid),
                "replay/valid_fraction": jnp.mean(batch.valid),
                "optim/critic_grad_norm": optax.global_norm(grads),
            },
        )
        new_state = SACState(
            critic_params=critic_params,
            critic_target=critic_target,
            actor_params=actor_params,
            log_alpha=log_alpha,
            aux_params=aux_params,
            ema_params=ema_params,
            batch_stats=batch_stats,
            critic_opt_state=critic_opt_state,
            actor_opt_state=actor_opt_state,
            alpha_opt_state=alpha_opt_state,
            key=key,
            update_step=step,
        )
        return new_state, metrics

    def update_many(self, state: SACState, replay, replay_state, beta, num_updates: int, unroll: int = 1):
        """`num_updates` sample-and-update steps in one dispatch. The replay's priorities are not
        updated: SAC's configs sample uniformly (priority exponent 0, `beta` 0)."""

        def one_update(agent_state, _):
            key, k_sample = jax.random.split(agent_state.key)
            batch = replay.sample(replay_state, k_sample, beta)
            return self.update(agent_state.replace(key=key), batch)

        if num_updates == 1:  # a length-1 scan is slower on XLA:CPU (agents/rainbow.py update_many)
            state, metrics = one_update(state, None)
        else:
            state, metrics = jax.lax.scan(one_update, state, None, length=num_updates, unroll=unroll)
        return state, replay_state, jax.tree.map(jnp.mean, metrics)
