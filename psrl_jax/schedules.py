"""Tiny named schedules (DrQ-v2 style): a value as a function of the step, usable in and out of jit."""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
    """Linear from `start` at step 0 to `end` at `steps`, constant afterwards."""

    start: float
    end: float
    steps: int

    def __call__(self, step):
        fraction = jnp.clip(jnp.asarray(step, jnp.float32) / max(self.steps, 1), 0.0, 1.0)
        return self.start + fraction * (self.end - self.start)
