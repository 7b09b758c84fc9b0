"""Data-efficient Rainbow (C51, dueling, noisy nets, double Q, prioritised n-step replay), optionally
with PSRL's paired-similarity losses on its encoder (config.psrl; losses/psrl.py).

Pure functions over an explicit `RainbowState`; nothing here knows about seeds: the trainer vmaps
`init`, `act` and `update_many` over a leading seed axis. With every PSRL term off the PSRL state
fields are empty and the update is exactly Rainbow's.

The networks compute in config.agent.compute_dtype (float32 or bfloat16) with float32 parameters,
optimiser state and losses. The update's pieces run under jax.named_scope ("encoder",
"distributional_loss", "psrl_loss" and its sub-scopes, "optimizer") so profiler traces name them.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from psrl_jax.losses.psrl import PSRLAuxiliary, PSRLHyperparams
from psrl_jax.losses.rainbow import c51_support, categorical_double_q_loss
from psrl_jax.networks.q_network import RainbowQNetwork, compute_dtype
from psrl_jax.ops.augment import augment_observations, to_float
from psrl_jax.replay.sequence_replay import SequenceBatch


@flax.struct.dataclass
class RainbowState:
    params: Any  # Q-network variables (encoder "torso" + "head"); what acting uses
    target_params: Any  # Q-network variables for the bootstrap target
    aux_params: Any  # PSRL modules: correspondence, transform, projection, predictor ({} without PSRL)
    ema_params: Any  # PSRL target side: EMA of the encoder and the projection ({} without PSRL)
    batch_stats: Any  # BatchNorm statistics of the correspondence module ({} without PSRL)
    opt_state: Any  # Adam over {"q": params, "aux": aux_params}
    key: jax.Array
    update_step: jax.Array  # int32 scalar, number of gradient updates so far


# Gradient-clipping groups of config.agent.grad_clip = "per_group" (SPR clips the encoder + Q head
# and its transition model separately): the Q network, the AAT with the global heads, and the
# correspondence module. Keys are the trainable tree's {"q": ..., "aux": {module: ...}}.
AUX_GRAD_GROUPS = {"transform": "aat", "projection": "aat", "predictor": "aat", "correspondence": "correspondence"}


def grad_groups(trainable: dict) -> dict:
    """{"q_network": ..., "aat": {...}, "correspondence": {...}}: the groups present in `trainable`."""
    groups = {"q_network": trainable["q"]}
    for name, tree in trainable["aux"].items():
        groups.setdefault(AUX_GRAD_GROUPS[name], {})[name] = tree
    return groups


def group_norms(grads: dict) -> dict:
    return {group: optax.global_norm(tree) for group, tree in grad_groups(grads).items()}


def clip_by_group_norm(max_norm: float) -> optax.GradientTransformation:
    """Each group of `grad_groups` rescaled to norm max_norm when its norm exceeds it (optax's
    clip_by_global_norm, per group); a group under the limit passes unchanged. Its state is
    clip_by_global_norm's (empty), so the optimiser state has the same tree in either mode."""

    def update(updates, state, params=None):
        del params
        scale = {
            group: jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30)) for group, norm in group_norms(updates).items()
        }

        def clip(tree, group):
            return jax.tree.map(lambda g: jnp.where(scale[group] < 1.0, g * scale[group], g), tree)

        aux = {name: clip(tree, AUX_GRAD_GROUPS[name]) for name, tree in updates["aux"].items()}
        return {"q": clip(updates["q"], "q_network"), "aux": aux}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@dataclasses.dataclass(frozen=True)
class RainbowHyperparams:
    """config.agent (configs/rainbow.py documents every field) and replay.priority, read once."""

    num_atoms: int
    v_min: float
    v_max: float
    hidden_size: int
    noisy: bool
    noisy_sigma0: float
    dueling: bool
    encoder: str
    encoder_channels: tuple
    dropout_rate: float
    renormalize: bool
    dueling_grad_scale: float
    compute_dtype: Any
    double_q: bool
    learning_rate: float
    adam_eps: float
    grad_clip: str  # "per_group" (SPR) or "global"
    max_grad_norm: float
    target_update_period: int
    augment: bool
    shift_pad: int
    intensity_scale: float
    priority: str  # "kl" (SPR) or "cross_entropy"
    eval_epsilon: float  # epsilon-greedy when evaluating (config.eval.epsilon); training acts noisily, epsilon 0

    @classmethod
    def from_config(cls, config) -> "RainbowHyperparams":
        a = config.agent
        return cls(
            num_atoms=int(a.num_atoms),
            v_min=float(a.v_min),
            v_max=float(a.v_max),
            hidden_size=int(a.hidden_size),
            noisy=bool(a.noisy),
            noisy_sigma0=float(a.noisy_sigma0),
            dueling=bool(a.dueling),
            encoder=a.encoder,
            encoder_channels=tuple(a.encoder_channels),
            dropout_rate=float(a.dropout_rate),
            renormalize=bool(a.renormalize),
            dueling_grad_scale=float(a.dueling_grad_scale),
            compute_dtype=compute_dtype(a),
            double_q=bool(a.double_q),
            learning_rate=float(a.learning_rate),
            adam_eps=float(a.adam_eps),
            grad_clip=a.grad_clip,
            max_grad_norm=float(a.max_grad_norm),
            target_update_period=int(a.target_update_period),
            augment=bool(a.augmentation.enabled),
            shift_pad=int(a.augmentation.shift_pad),
            intensity_scale=float(a.augmentation.intensity_scale),
            priority=config.replay.priority,
            eval_epsilon=float(config.eval.epsilon),
        )


def make_optimizer(hp: RainbowHyperparams) -> optax.GradientTransformation:
    if hp.grad_clip == "per_group":
        clip = clip_by_group_norm(hp.max_grad_norm)
    else:
        clip = optax.clip_by_global_norm(hp.max_grad_norm)
    return optax.chain(clip, optax.adam(hp.learning_rate, eps=hp.adam_eps))


@dataclasses.dataclass(frozen=True)
class RainbowAgent:
    """The static parts of the agent (hyperparameters, network, optimiser, the PSRL auxiliary or None);
    all methods are pure."""

    hp: RainbowHyperparams
    num_actions: int
    observation_shape: tuple  # (frame_stack, H, W)
    psrl_hp: PSRLHyperparams | None = None  # None: no PSRL term is on (plain Rainbow)

    @classmethod
    def from_config(cls, config, num_actions: int, observation_shape: tuple) -> "RainbowAgent":
        return cls(
            RainbowHyperparams.from_config(config), num_actions, observation_shape, PSRLHyperparams.from_config(config)
        )

    @property
    def network(self) -> RainbowQNetwork:
        hp = self.hp
        return RainbowQNetwork(
            num_actions=self.num_actions,
            num_atoms=hp.num_atoms,
            hidden_size=hp.hidden_size,
            noisy=hp.noisy,
            sigma0=hp.noisy_sigma0,
            dueling=hp.dueling,
            encoder=hp.encoder,
            encoder_channels=hp.encoder_channels,
            dropout_rate=hp.dropout_rate,
            renormalize=hp.renormalize,
            dueling_grad_scale=hp.dueling_grad_scale,
            dtype=hp.compute_dtype,
        )

    @property
    def optimizer(self):
        return make_optimizer(self.hp)

    @property
    def psrl(self) -> PSRLAuxiliary | None:
        if self.psrl_hp is None:
            return None
        return PSRLAuxiliary.build(self.psrl_hp, self.network, self.num_actions)

    @property
    def atoms(self):
        return c51_support(self.hp.num_atoms, self.hp.v_min, self.hp.v_max)

    def init(self, key: jax.Array) -> RainbowState:
        key, k_params, k_noise, k_drop, k_aux = jax.random.split(key, 5)
        dummy = jnp.zeros((1, *self.observation_shape), jnp.float32)
        params = self.network.init(
            {"params": k_params, "noise": k_noise, "dropout": k_drop}, dummy, train=False, noisy_sample=True
        )
        aux_params, ema_params, batch_stats = {}, {}, {}
        if self.psrl is not None:
            maps, skip = self.network.apply(
                params, dummy, train=False, return_skip=True, method=RainbowQNetwork.encode
            )  # [1, F, h, w, C]
            aux_params, ema_params, batch_stats = self.psrl.init(k_aux, params, maps.shape[2:], skip.shape[2:])
        return RainbowState(
            params=params,
            target_params=params,
            aux_params=aux_params,
            ema_params=ema_params,
            batch_stats=batch_stats,
            opt_state=self.optimizer.init({"q": params, "aux": aux_params}),
            key=key,
            update_step=jnp.zeros((), jnp.int32),
        )

    def q_values(self, params, obs_uint8, key, noisy_sample: bool):
        logits = self.network.apply(
            params, to_float(obs_uint8), train=False, noisy_sample=noisy_sample, rngs={"noise": key}
        )
        return jnp.sum(jax.nn.softmax(logits, axis=-1) * self.atoms, axis=-1)

    def greedy_actions(self, params, obs_uint8, key, epsilon, noisy_sample: bool):
        """Greedy actions of the (noisy) network for a batch [N, F, H, W], epsilon-greedy on top."""
        k_noise, k_explore, k_random = jax.random.split(key, 3)
        greedy = jnp.argmax(self.q_values(params, obs_uint8, k_noise, noisy_sample), axis=-1)
        n = obs_uint8.shape[0]
        random_actions = jax.random.randint(k_random, (n,), 0, self.num_actions)
        explore = jax.random.uniform(k_explore, (n,)) < epsilon
        return jnp.where(explore, random_actions, greedy).astype(jnp.int32)

    def act(self, state: RainbowState, obs_uint8, key, explore: bool):
        """Training (`explore`): a sample of the noisy network, no epsilon (SPR). Evaluation: the
        noisy layers' mean weights, epsilon-greedy with eval_epsilon."""
        if explore:
            return self.greedy_actions(state.params, obs_uint8, key, 0.0, noisy_sample=True)
        return self.greedy_actions(state.params, obs_uint8, key, self.hp.eval_epsilon, noisy_sample=False)

    def random_actions(self, key, n: int):
        """The warm-up's uniform actions, int32 [n]."""
        return jax.random.randint(key, (n,), 0, self.num_actions).astype(jnp.int32)

    def loss(self, trainable, state: RainbowState, batch: SequenceBatch, key):
        """Importance-weighted C51 double-Q loss plus, when on, the PSRL loss.

        trainable = {"q": Q-network variables, "aux": PSRL params}; the rest comes from `state`.
        Returns (scalar loss, (per-sample priorities, new batch_stats, metrics)): the priority is SPR's
        KL or the RL loss itself (config.replay.priority).
        """
        params, hp = trainable["q"], self.hp
        k_rl, k_psrl = jax.random.split(key)
        k_aug_tm1, k_aug_t, k_online, k_select, k_target, k_drop = jax.random.split(k_rl, 6)
        psrl = self.psrl

        def prepare(k, obs):
            if hp.augment:
                return augment_observations(k, obs, hp.shift_pad, hp.intensity_scale)
            return to_float(obs)

        if psrl is not None:  # the offsets are drawn per sample, so o_k's augmentation equals Rainbow's
            k_future = jax.random.fold_in(k_psrl, 1)
            obs_tm1, future_obs = psrl.augment_with_future(prepare, k_aug_tm1, k_future, batch.obs, batch.future_obs)
        else:
            obs_tm1 = prepare(k_aug_tm1, batch.obs)
        obs_t = prepare(k_aug_t, batch.next_obs)
        net = self.network
        with jax.named_scope("encoder"):  # the online encoder on o_k, shared by the RL and PSRL losses
            maps_tm1, skip_tm1 = net.apply(
                params, obs_tm1, train=True, return_skip=True, method=RainbowQNetwork.encode, rngs={"dropout": k_drop}
            )
        # The Q head on o_k, the online (selector) and target networks on o_{k+n}, and the C51 loss.
        with jax.named_scope("distributional_loss"):
            logits_tm1 = net.apply(
                params, maps_tm1, noisy_sample=True, method=RainbowQNetwork.q_head, rngs={"noise": k_online}
            )
            selector_t = net.apply(params, obs_t, train=False, noisy_sample=True, rngs={"noise": k_select})
            target_t = net.apply(state.target_params, obs_t, train=False, noisy_sample=True, rngs={"noise": k_target})
            per_sample, kl = categorical_double_q_loss(
                logits_tm1,
                batch.action,
                batch.n_step_return,
                batch.bootstrap_discount,
                jax.lax.stop_gradient(target_t),
                jax.lax.stop_gradient(selector_t),
                self.atoms,
                double_q=hp.double_q,
            )
        priority = kl if hp.priority == "kl" else per_sample
        weights = batch.importance_weights * batch.valid
        total = jnp.mean(weights * per_sample)
        q_tm1 = jnp.sum(jax.nn.softmax(logits_tm1, -1) * self.atoms, -1)
        metrics = {
            "loss/rl": jnp.sum(batch.valid * per_sample) / jnp.maximum(jnp.sum(batch.valid), 1.0),
            "q/mean": jnp.mean(jnp.take_along_axis(q_tm1, batch.action[:, None], axis=1)),
            "replay/valid_fraction": jnp.mean(batch.valid),
            "replay/importance_weight": jnp.mean(batch.importance_weights),
        }
        batch_stats = state.batch_stats
        if psrl is not None:

            def encode_online(obs):  # later CAT query stacks (psrl.cat_steps > 1)
                k = jax.random.fold_in(k_psrl, 2)
                return net.apply(
                    params, obs, train=True, return_skip=True, method=RainbowQNetwork.encode, rngs={"dropout": k}
                )

            psrl_total, batch_stats, psrl_metrics = psrl.loss(
                trainable["aux"],
                state.batch_stats,
                state.ema_params,
                online_maps=maps_tm1,
                online_skip=skip_tm1,
                future_obs=future_obs,
                batch=batch,
                encode_online=encode_online,
            )
            total = total + psrl_total
            metrics.update(psrl_metrics)  # with "loss/psrl": what the update adds
        return total, (priority, batch_stats, metrics)

    def update(self, state: RainbowState, batch: SequenceBatch):
        """One gradient step. Returns (new state, per-sample priorities, metrics); the metrics hold the
        gradient norm before clipping, overall and per clipping group."""
        key, k_loss = jax.random.split(state.key)
        trainable = {"q": state.params, "aux": state.aux_params}
        grad_fn = jax.grad(self.loss, has_aux=True)
        grads, (priority, batch_stats, metrics) = grad_fn(trainable, state, batch, k_loss)
        with jax.named_scope("optimizer"):
            updates, opt_state = self.optimizer.update(grads, state.opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
        params, aux_params = trainable["q"], trainable["aux"]
        step = state.update_step + 1
        target_params = optax.periodic_update(params, state.target_params, step, self.hp.target_update_period)
        ema_params = state.ema_params
        if self.psrl is not None:
            ema_params = self.psrl.target_update(params, aux_params, ema_params)
        metrics = dict(metrics, **{"optim/grad_norm": optax.global_norm(grads)})
        metrics.update({f"optim/grad_norm/{group}": norm for group, norm in group_norms(grads).items()})
        new_state = RainbowState(
            params=params,
            target_params=target_params,
            aux_params=aux_params,
            ema_params=ema_params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            key=key,
            update_step=step,
        )
        return new_state, priority, metrics

    def update_many(self, state: RainbowState, replay, replay_state, beta, num_updates: int, unroll: int = 1):
        """`num_updates` sample-update-reprioritise steps in one `lax.scan` (one dispatch).

        `unroll` is lax.scan's: XLA:CPU runs convolutions inside a while loop about 6x slower than
        unrolled (measured: 4 full-width updates 1308 ms in a loop vs 196 ms unrolled), so the
        trainer unrolls fully on CPU; on GPU the loop costs nothing and keeps compiles short.
        """

        def one_update(carry, _):
            agent_state, buffer_state = carry
            key, k_sample = jax.random.split(agent_state.key)
            agent_state = agent_state.replace(key=key)
            batch = replay.sample(buffer_state, k_sample, beta)
            agent_state, priority, metrics = self.update(agent_state, batch)
            # Priority |priority| + eps; invalid samples (the reset transition after an episode's last
            # frame) get 0 and are never drawn again until their slot is overwritten.
            buffer_state = replay.update_priorities(buffer_state, batch.indices, jnp.abs(priority), valid=batch.valid)
            return (agent_state, buffer_state), metrics

        if num_updates == 1:
            # A length-1 lax.scan ran a full-width update 2-5x slower on XLA:CPU than the same update
            # called directly (444 vs 88 ms in launch/benchmark.py --updates_per_dispatch_list=1,2),
            # though its compiled loop count is the same; likely copies of the carried replay state.
            (state, replay_state), metrics = one_update((state, replay_state), None)
        else:
            (state, replay_state), metrics = jax.lax.scan(
                one_update, (state, replay_state), None, length=num_updates, unroll=unroll
            )
        return state, replay_state, jax.tree.map(jnp.mean, metrics)
