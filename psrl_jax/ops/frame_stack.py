"""The one frame-stacking rule, shared by acting, evaluation and replay.

A stack holds the last S frames, oldest first. Frames from before the latest episode start inside
that window are padding: zero frames ("zeros", Dopamine's Atari stacks) or copies of the episode's
first frame ("first_frame", the FrameStack wrappers of CURL and DrQ on DMC). `stack_window` applies
the rule to a window of frames and their episode-start flags, under numpy (the evaluation loops'
host stacks) or jax.numpy (the actor's stacks inside jit, replay's stacks rebuilt at sample time),
so the three cannot drift apart.
"""

import numpy as np

PADDINGS = ("zeros", "first_frame")


def check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"stack padding must be one of {PADDINGS}, got {padding!r}")


def stack_window(frames, first, in_range, padding: str, xp=np):
    """(stack, keep) of windows frames [..., S, *frame] (oldest first) with their episode-start flags
    first [..., S] and in_range [..., S] (False for rows before the buffer's start): a frame is kept
    when it is in range and no later frame of its window starts an episode (a suffix of the window;
    the newest row is always kept); the rest is padding. keep is bool [..., S]. `xp` is numpy or
    jax.numpy."""
    check_padding(padding)
    starts = xp.logical_and(first, in_range).astype(np.int32)
    starts_after = xp.flip(xp.cumsum(xp.flip(starts, -1), -1), -1) - starts
    keep = xp.logical_and(in_range, starts_after == 0)
    frame_axes = (1,) * (frames.ndim - keep.ndim)
    if padding == "first_frame":
        oldest_kept = xp.argmax(keep, axis=-1)[..., None]  # the episode's first frame in the window
        index = oldest_kept.reshape(oldest_kept.shape + frame_axes)
        fill = xp.broadcast_to(xp.take_along_axis(frames, index, axis=keep.ndim - 1), frames.shape)
    else:
        fill = xp.zeros_like(frames)
    return xp.where(keep.reshape(keep.shape + frame_axes), frames, fill), keep


def push(stacks, frames, first, padding: str, xp=np):
    """stacks [N, S, *frame] with the newest frames [N, *frame] appended; an env whose frame starts
    an episode (`first` [N]) replaces its older frames with padding."""
    window = xp.concatenate([stacks[:, 1:], frames[:, None]], axis=1)
    size = stacks.shape[1]
    starts = xp.logical_and(first[:, None], (xp.arange(size) == size - 1)[None, :])
    return stack_window(window, starts, xp.ones(starts.shape, bool), padding, xp)[0]


class FrameStacker:
    """Host-side (numpy) stacks of `num_envs` envs, for the evaluation loops."""

    def __init__(
        self, num_envs: int, frame_stack: int, frame_shape: tuple[int, ...], dtype=np.uint8, padding: str = "zeros"
    ):
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        check_padding(padding)
        self.stack = np.zeros((num_envs, frame_stack, *frame_shape), dtype=dtype)
        self.padding = padding

    def push(self, frames: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Appends `frames` [N, *frame]; envs with `first` drop their old episode's frames. Returns
        the stacks [N, F, *frame]: a new array each time, safe to keep after later pushes."""
        self.stack = push(self.stack, np.asarray(frames), np.asarray(first, bool), self.padding)
        return self.stack
