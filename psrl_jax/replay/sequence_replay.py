"""Prioritised sequence replay that stores every frame once.

Rows are dm_env-style steps (one per env step per environment). Stacked observations, n-step
returns and K-step prediction targets are rebuilt at sample time from a short sequence of
consecutive rows, so the buffer holds one frame per transition instead of 2 * frame_stack.

Thin glue around `flashbax.make_prioritised_trajectory_buffer` with period 1: every row start is
one sum-tree item, and the sampled sequence of length L = (S - 1) + max(n, K) + 1 has its anchor
(the transition's time t) at index S - 1, after the S - 1 rows of frame history.
"""

import dataclasses
from typing import Any

import flashbax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flashbax.buffers import sum_tree
from flashbax.buffers.prioritised_trajectory_buffer import (
    SET_BATCH_FN,
    PrioritisedTrajectoryBufferState,
)

from psrl_jax.ops.frame_stack import check_padding, stack_window

ReplayState = PrioritisedTrajectoryBufferState


@flax.struct.dataclass
class Step:
    """One env step of one environment (dm_env convention)."""

    frame: jax.Array  # uint8 [*frame_shape] (float32 [D] for DMC states)
    action: jax.Array  # action taken at this frame (ignored if this frame ends the episode)
    reward: jax.Array  # float32 [], received on arriving at this frame (0 on a first frame)
    discount: jax.Array  # float32 [], 0 if arriving here ended the game or lost a life
    first: jax.Array  # bool [], this frame starts an episode


@flax.struct.dataclass
class Transitions:
    """What a sampled sequence decodes to (before the sampling bookkeeping is attached)."""

    obs: jax.Array  # uint8 [B, S, *frame_shape]
    action: jax.Array  # [B, *action_shape]
    n_step_return: jax.Array  # float32 [B]
    bootstrap_discount: jax.Array  # float32 [B]
    next_obs: jax.Array  # uint8 [B, S, *frame_shape]
    valid: jax.Array  # float32 [B]
    future_obs: jax.Array  # uint8 [B, K, S, *frame_shape]
    future_actions: jax.Array  # [B, K, *action_shape]
    future_mask: jax.Array  # float32 [B, K]
    obs_frame_mask: jax.Array  # float32 [B, S]: 1 for a frame of obs's episode, 0 for stack padding
    future_frame_mask: jax.Array  # float32 [B, K, S]: the same for each future stack


@flax.struct.dataclass
class SequenceBatch(Transitions):
    """Decoded transitions plus the sampling bookkeeping of prioritised replay."""

    indices: jax.Array  # int32 [B], flashbax item indices for update_priorities
    probabilities: jax.Array  # float32 [B]
    importance_weights: jax.Array  # float32 [B], (N * P)^-beta / max over the batch


def make_stack(
    frames: jax.Array, first: jax.Array, position, frame_stack: int, padding: str = "zeros", with_mask: bool = False
):
    """Frames position-S+1..position (oldest first), padded by ops/frame_stack.py's rule (what
    precedes the latest episode start is padding; rows before index 0 are padding too), so it
    reproduces the actor's own stacks.

    frames: [T, *frame_shape], first: [T] bool, position: int (may be traced).
    with_mask: also return the float32 [S] mask, 1 for the stack's real frames and 0 for padding.
    """
    check_padding(padding)
    rows = position - (frame_stack - 1) + jnp.arange(frame_stack)
    in_range = rows >= 0
    rows = jnp.clip(rows, 0, frames.shape[0] - 1)
    stack, keep = stack_window(frames[rows], first[rows], in_range, padding, xp=jnp)
    return (stack, keep.astype(jnp.float32)) if with_mask else stack


def _decode_sequence(
    seq: Step, frame_stack: int, n_step: int, gamma: float, prediction_steps: int, padding: str = "zeros"
) -> Transitions:
    """One [L]-row sequence -> one transition anchored at row S - 1 (unbatched fields)."""
    anchor = frame_stack - 1
    horizon = max(n_step, prediction_steps)
    assert seq.first.shape[0] == anchor + horizon + 1, "sequence length must be S-1+max(n,K)+1"

    # Quantities of rows anchor+1 .. anchor+horizon; index i-1 holds row anchor+i.
    first_after = seq.first[anchor + 1 :]
    discount_after = seq.discount[anchor + 1 :].astype(jnp.float32)
    reward_after = seq.reward[anchor + 1 :].astype(jnp.float32)
    # same_episode[i-1]: no episode start in rows anchor+1..anchor+i.
    same_episode = jnp.cumprod(1 - first_after.astype(jnp.int32))
    # discount_before[i-1] = prod_{k=1..i-1} discount_{anchor+k}
    discount_before = jnp.concatenate([jnp.ones((1,), jnp.float32), jnp.cumprod(discount_after)[:-1]])

    in_return = same_episode[:n_step].astype(jnp.float32)
    m = jnp.sum(same_episode[:n_step])
    gamma_powers = jnp.asarray(gamma, jnp.float32) ** jnp.arange(n_step, dtype=jnp.float32)
    n_step_return = jnp.sum(in_return * gamma_powers * discount_before[:n_step] * reward_after[:n_step])
    # same_episode is a prefix mask, so this is prod_{k=1..m} discount_{anchor+k}.
    bootstrap_discount = jnp.asarray(gamma, jnp.float32) ** m.astype(jnp.float32) * jnp.prod(
        jnp.where(in_return > 0, discount_after[:n_step], 1.0)
    )

    stack_at = lambda p: make_stack(seq.frame, seq.first, p, frame_stack, padding, with_mask=True)
    obs, obs_frame_mask = stack_at(anchor)
    next_obs, _ = stack_at(anchor + m)

    k_steps = prediction_steps
    if k_steps > 0:
        future_obs, future_frame_mask = jax.vmap(stack_at)(anchor + 1 + jnp.arange(k_steps))
    else:
        future_obs = jnp.zeros((0,) + obs.shape, obs.dtype)
        future_frame_mask = jnp.zeros((0, frame_stack), jnp.float32)
    future_actions = seq.action[anchor : anchor + k_steps]
    # A terminal (or life-loss) frame may be a target; nothing after it may be.
    not_terminal = (discount_after > 0).astype(jnp.float32)
    alive_before = jnp.concatenate([jnp.ones((1,), jnp.float32), jnp.cumprod(not_terminal)[:-1]])
    future_mask = same_episode[:k_steps].astype(jnp.float32) * alive_before[:k_steps]

    return Transitions(
        obs=obs,
        action=seq.action[anchor],
        n_step_return=n_step_return,
        bootstrap_discount=bootstrap_discount,
        next_obs=next_obs,
        valid=(m >= 1).astype(jnp.float32),
        future_obs=future_obs,
        future_actions=future_actions,
        future_mask=future_mask,
        obs_frame_mask=obs_frame_mask,
        future_frame_mask=future_frame_mask,
    )


def decode_sequences(
    sequences: Step, frame_stack: int, n_step: int, gamma: float, prediction_steps: int, padding: str = "zeros"
) -> Transitions:
    """[B, L]-row sequences -> a batch of transitions anchored at row S - 1 of each."""
    decode = lambda seq: _decode_sequence(seq, frame_stack, n_step, gamma, prediction_steps, padding)
    return jax.vmap(decode)(sequences)


def sequence_length(frame_stack: int, n_step: int, prediction_steps: int) -> int:
    return (frame_stack - 1) + max(n_step, prediction_steps) + 1


def _flashbax_device() -> str:
    backend = jax.default_backend()
    return backend if backend in ("gpu", "tpu") else "cpu"


@dataclasses.dataclass(frozen=True)
class SequenceReplay:
    """Static sizes plus pure functions of a single seed's ReplayState (vmap them over seeds)."""

    frame_shape: tuple[int, ...]
    frame_dtype: Any  # uint8 frames; float32 for DMC's proprioceptive states
    action_dtype: Any
    action_shape: tuple[int, ...]
    envs_per_seed: int
    max_length_time_axis: int  # rows per environment
    frame_stack: int
    stack_padding: str  # "zeros" or "first_frame" (make_stack)
    n_step: int
    prediction_steps: int
    gamma: float
    batch_size: int
    priority_eps: float
    device: str  # flashbax's "cpu" / "gpu" / "tpu" sum-tree update flavour
    buffer: Any  # flashbax PrioritisedTrajectoryBuffer

    @property
    def sequence_length(self) -> int:
        return sequence_length(self.frame_stack, self.n_step, self.prediction_steps)

    @property
    def capacity(self) -> int:
        return self.envs_per_seed * self.max_length_time_axis

    def example_step(self) -> Step:
        return Step(
            frame=jnp.zeros(self.frame_shape, self.frame_dtype),
            action=jnp.zeros(self.action_shape, self.action_dtype),
            reward=jnp.zeros((), jnp.float32),
            discount=jnp.zeros((), jnp.float32),
            first=jnp.zeros((), jnp.bool_),
        )

    def init(self) -> ReplayState:
        # flashbax's sum tree starts with a weakly typed max priority that its first add makes
        # strong: without the cast every jitted function taking the state compiles twice.
        return jax.tree.map(lambda x: x.astype(x.dtype), self.buffer.init(self.example_step()))

    def add(self, state: ReplayState, steps: Step) -> ReplayState:
        """Append one time step for each of the E environments (leading axis [E])."""
        # flashbax insists on exact dtypes; cast so callers may pass e.g. int discounts.
        steps = Step(
            frame=jnp.asarray(steps.frame, self.frame_dtype),
            action=jnp.asarray(steps.action, self.action_dtype),
            reward=jnp.asarray(steps.reward, jnp.float32),
            discount=jnp.asarray(steps.discount, jnp.float32),
            first=jnp.asarray(steps.first, jnp.bool_),
        )
        # flashbax adds [E, T] blocks; we add T = 1.
        state = self.buffer.add(state, jax.tree.map(lambda x: x[:, None], steps))
        return self._give_new_items_max_priority(state)

    def _give_new_items_max_priority(self, state: ReplayState) -> ReplayState:
        """flashbax 0.1.3 gives a newly completed sequence int(max priority): it builds the values
        with full_like on the int32 item indices. Restore the exact max on those items."""
        rows = self.max_length_time_axis
        # With period 1 and one row per add, exactly the sequence ending at the newest row is new.
        start = state.running_index - self.sequence_length
        items = jnp.arange(self.envs_per_seed) * rows + jnp.maximum(start, 0) % rows
        tree = state.sum_tree_state
        # Before the first sequence completes, rewrite the current leaves (a no-op).
        leaves = jnp.where(start >= 0, tree.max_recorded_priority, sum_tree.get_batch(tree, items))
        return state.replace(sum_tree_state=SET_BATCH_FN[self.device](tree, items, leaves))

    def can_sample(self, state: ReplayState) -> jax.Array:
        return self.buffer.can_sample(state)

    def num_sampleable_items(self, state: ReplayState) -> jax.Array:
        """Sequences flashbax can draw: those inside the stored rows, not crossing the head."""
        rows = jnp.minimum(state.running_index, self.max_length_time_axis)
        per_env = jnp.maximum(rows - self.sequence_length + 1, 0)
        return self.envs_per_seed * per_env

    def sample(self, state: ReplayState, key: jax.Array, beta) -> SequenceBatch:
        drawn = self.buffer.sample(state, key)
        transitions = decode_sequences(
            drawn.experience, self.frame_stack, self.n_step, self.gamma, self.prediction_steps, self.stack_padding
        )
        probabilities = drawn.probabilities.astype(jnp.float32)
        # Float drift in the sum tree's inner nodes can (rarely) land on a zero-priority leaf;
        # such a draw has P = 0 (or NaN on an empty tree) and must not be learned from.
        drawable = probabilities > 0
        num_items = jnp.maximum(self.num_sampleable_items(state), 1).astype(jnp.float32)
        log_weights = -jnp.asarray(beta, jnp.float32) * (
            jnp.log(num_items) + jnp.log(jnp.where(drawable, probabilities, 1.0))
        )
        log_weights = jnp.where(drawable, log_weights, -jnp.inf)
        max_log_weight = jnp.where(jnp.any(drawable), jnp.max(log_weights), 0.0)
        importance_weights = jnp.exp(log_weights - max_log_weight)
        fields = {f.name: getattr(transitions, f.name) for f in dataclasses.fields(transitions)}
        fields["valid"] = transitions.valid * drawable
        return SequenceBatch(
            **fields,
            indices=drawn.indices.astype(jnp.int32),
            probabilities=probabilities,
            importance_weights=importance_weights,
        )

    def update_priorities(
        self, state: ReplayState, indices: jax.Array, priorities: jax.Array, valid=None
    ) -> ReplayState:
        """Store priorities + eps (flashbax raises them to alpha); invalid samples get 0.

        valid defaults to priorities > 0, so passing 0 for an invalid sample retires it for good.
        An item already at 0 stays at 0: it was retired, or an add made it cross the write head
        after it was sampled (stale index), and reviving it would sample overwritten rows.
        """
        priorities = jnp.asarray(priorities, jnp.float32)
        valid = priorities > 0 if valid is None else jnp.asarray(valid) > 0
        still_drawable = sum_tree.get_batch(state.sum_tree_state, indices) > 0
        stored = jnp.where(valid & still_drawable, priorities + self.priority_eps, 0.0)
        return self.buffer.set_priorities(state, indices, stored)


def make_sequence_replay(
    config, frame_shape, action_dtype=jnp.int32, action_shape=(), frame_dtype=jnp.uint8, capacity: int | None = None
) -> SequenceReplay:
    """The replay of config.replay for frames of `frame_shape`; `capacity` (transitions per seed)
    overrides config.replay.capacity (the trainer caps it at what the run writes)."""
    frame_shape = tuple(int(d) for d in frame_shape)
    action_shape = tuple(int(d) for d in action_shape)
    envs = int(config.env.envs_per_seed)
    frame_stack = int(config.env.frame_stack)
    n_step = int(config.replay.n_step)
    prediction_steps = int(config.replay.prediction_steps)
    length = sequence_length(frame_stack, n_step, prediction_steps)
    capacity = int(config.replay.capacity if capacity is None else capacity)
    max_length_time_axis = capacity // envs
    if max_length_time_axis < length:
        raise ValueError(
            f"replay capacity {capacity} over {envs} envs leaves "
            f"{max_length_time_axis} rows per env, fewer than the sequence length {length}"
        )
    device = _flashbax_device()
    buffer = flashbax.make_prioritised_trajectory_buffer(
        add_batch_size=envs,
        sample_batch_size=int(config.agent.batch_size),
        sample_sequence_length=length,
        period=1,
        min_length_time_axis=length,
        max_length_time_axis=max_length_time_axis,
        priority_exponent=float(config.replay.priority_exponent),
        device=device,
    )
    return SequenceReplay(
        frame_shape=frame_shape,
        frame_dtype=jnp.dtype(frame_dtype),
        action_dtype=jnp.dtype(action_dtype),
        action_shape=action_shape,
        envs_per_seed=envs,
        max_length_time_axis=max_length_time_axis,
        frame_stack=frame_stack,
        stack_padding=str(config.env.stack_padding),
        n_step=n_step,
        prediction_steps=prediction_steps,
        gamma=float(config.agent.gamma),
        batch_size=int(config.agent.batch_size),
        priority_eps=float(config.replay.priority_eps),
        device=device,
        buffer=buffer,
    )


def bytes_per_transition(state) -> float:
    """Bytes of the whole buffer state (rows + sum tree + counters) per stored transition.

    Works on concrete states and on `jax.eval_shape` outputs, with or without a seed axis.
    """
    leaves = jax.tree.leaves(state)
    total = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)
    rows = int(np.prod(state.experience.first.shape))
    return total / rows
