"""The stacks the actor acts on (jitted), the evaluation loops' host stacks (numpy) and the stacks
replay rebuilds for the same rows are the same (ops/frame_stack.py), and follow the rule checked
independently."""

import jax.numpy as jnp
import numpy as np
import pytest

from psrl_jax.ops.frame_stack import FrameStacker, push
from psrl_jax.replay.sequence_replay import make_stack


@pytest.mark.parametrize("padding", ["zeros", "first_frame"])
def test_actor_stack_equals_replay_stack_across_episode_starts(padding):
    rng = np.random.default_rng(0)
    steps, envs, frame_stack = 40, 3, 4
    frames = rng.integers(1, 255, (steps, envs, 6, 6), dtype=np.uint8)  # nonzero: zeros mean padding
    first = rng.random((steps, envs)) < 0.15
    first[0] = True
    first[5, 0] = first[6, 0] = True  # back-to-back episode starts (a one-frame episode)
    stack = jnp.full((envs, frame_stack, 6, 6), 77, jnp.uint8)  # stale content must never leak
    host = FrameStacker(envs, frame_stack, (6, 6), padding=padding)
    for t in range(steps):
        stack = push(stack, jnp.asarray(frames[t]), jnp.asarray(first[t]), padding, xp=jnp)
        host_stack = host.push(frames[t], first[t])
        assert isinstance(host_stack, np.ndarray)
        np.testing.assert_array_equal(host_stack, np.asarray(stack))
        for e in range(envs):
            expected = make_stack(jnp.asarray(frames[:, e]), jnp.asarray(first[:, e]), t, frame_stack, padding)
            np.testing.assert_array_equal(np.asarray(stack[e]), np.asarray(expected))
            # Independent check: the frames kept are exactly those since the latest episode start.
            start = max(i for i in range(t + 1) if first[i, e])
            kept = [i for i in range(t - frame_stack + 1, t + 1) if i >= start]
            np.testing.assert_array_equal(np.asarray(stack[e][frame_stack - len(kept) :]), frames[kept, e])
            padded = np.asarray(stack[e][: frame_stack - len(kept)])
            assert (padded == (frames[start, e] if padding == "first_frame" else 0)).all()
