"""SAC networks for DeepMind Control from pixels (DESIGN.md 2, supplementary Table 2; CURL / SAC-AE).

Observations are stacks of RGB frames, float32 [B, F, H, W, 3] in [0, 1] (84x84 after the crop),
or, for state SAC, stacks of proprioceptive states float32 [B, F, D].

  PixelEncoder   4 convs of 32 filters, 3x3, strides 2, 1, 1, 1, ReLU, VALID: 84 -> 41 -> 39 -> 37 -> 35.
                 "stacked" (CURL, the SAC baseline): the 3F colour channels of the stack are one
                 image's channels -> [B, 35, 35, 32]. "framewise" (PSRL, Table 3): the same convs
                 with shared weights on each frame -> per-frame maps [B, F, 35, 35, 32]; the RL heads
                 see their channel concatenation (DESIGN.md 1).
                 "state" (state SAC): no encoder and no trunk; the flattened states [B, F * D]
                 go straight to the MLPs, as in the state-SAC baseline of SAC-AE and CURL.
  Trunk          flatten -> Linear(latent 50) -> LayerNorm (Table 2's latent dimension); CURL's SAC
                 stops there (its encoders are built with output_logits=True), SAC-AE adds a tanh
                 (`trunk_tanh`).
  SACCritic      encoder + trunk + twin Q MLPs (1024, 1024) on [latent, action].
  SACActor       its own trunk (the conv encoder is the critic's, fed detached maps, as in CURL)
                 + MLP (1024, 1024) -> mean and log-std of a tanh-squashed Gaussian.

Initialisation (`weight_init`): "orthogonal" is SAC-AE / CURL's: orthogonal Dense kernels and
delta-orthogonal convolutions (zero but for the centre tap, an orthogonal [C_in, C_out] matrix
with ReLU gain sqrt 2), zero biases. "orthogonal_flat" is DrQ's: the same Dense kernels, and each
conv kernel orthogonal as one (3 * 3 * C_in, C_out) matrix with gain sqrt 2. "lecun" is Flax's
default (LeCun normal), which the earliest pixel-SAC runs (docs/runs/sac-cartpole_swingup-100k-s0,
-s1) used.

Parameters of the critic live under "torso" (the conv encoder), "trunk", "q1", "q2", so PSRL's
EMA target encoder (losses/psrl.py) and the critic target can read the encoder alone.
`dtype` is the compute dtype (None: float32; bfloat16 for mixed precision); parameters are
float32 and the encoder's maps, Q values and actor outputs leave the modules in float32.
"""

from collections.abc import Sequence
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from psrl_jax.networks.encoders import concat_frames
from psrl_jax.ops.conv import Conv

ENCODERS = ("stacked", "framewise", "state")
INITS = ("orthogonal", "orthogonal_flat", "lecun")


def orthogonal(gain: float = 1.0):
    """Flax's orthogonal initialiser, one seed at a time under vmap. The trainer vmaps `init` over
    seeds, and XLA:CPU (jaxlib 0.10.2, 2 cores) deadlocked in the batched QR of the (1024, 1024)
    MLP kernels: jit(vmap(init)) of the state-SAC agent hung with 2 seeds, every thread idle, while
    jax.lax.map over the same seeds took 5 s (measured). sequential_vmap runs a loop instead of the
    batched QR; the values are bit-identical to initialising each seed alone."""
    base = nn.initializers.orthogonal(scale=gain)

    def init(key, shape, dtype=jnp.float32):
        return jax.custom_batching.sequential_vmap(lambda k: base(k, shape, dtype))(key)

    return init


def delta_orthogonal(gain: float):
    """Conv kernels [kh, kw, C_in, C_out] that are zero but for an orthogonal centre tap (x gain):
    at initialisation each conv maps a pixel's channels orthogonally (SAC-AE / CURL). Unlike
    jax.nn.initializers.delta_orthogonal it also takes C_in > C_out."""
    centre = orthogonal(gain)

    def init(key, shape, dtype=jnp.float32):
        kh, kw, c_in, c_out = shape
        return jnp.zeros(shape, dtype).at[kh // 2, kw // 2].set(centre(key, (c_in, c_out), dtype))

    return init


def kernel_init(init: str, conv: bool = False):
    """The kernel initialiser of `init`: orthogonal Dense kernels, and conv kernels either
    delta-orthogonal ("orthogonal": SAC-AE / CURL) or orthogonal as one (kh * kw * C_in, C_out) matrix
    ("orthogonal_flat": DrQ's `nn.init.orthogonal_` on the whole kernel); both with ReLU's gain
    sqrt(2). "lecun": Flax's default."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "lecun":
        return nn.initializers.lecun_normal()
    if not conv:
        return orthogonal()
    relu_gain = float(np.sqrt(2.0))
    return delta_orthogonal(relu_gain) if init == "orthogonal" else orthogonal(relu_gain)


class PixelEncoder(nn.Module):
    """CURL's conv stack on [B, F, H, W, 3]; see the module docstring for the two layouts.

    return_skip=True also returns the previous layer's maps (37x37 at 84 px), the skip input of
    the correspondence module's finest refinement level.
    """

    channels: Sequence[int] = (32, 32, 32, 32)
    strides: Sequence[int] = (2, 1, 1, 1)
    framewise: bool = False
    dtype: Any = None
    weight_init: str = "orthogonal"

    @nn.compact
    def __call__(self, obs: jax.Array, return_skip: bool = False):
        if obs.ndim != 5:
            raise ValueError(f"expected [B, F, H, W, C], got shape {obs.shape}")
        batch, frames, height, width, colours = obs.shape
        if self.framewise:
            h = obs.reshape(batch * frames, height, width, colours)
        else:
            h = jnp.moveaxis(obs, 1, 3).reshape(batch, height, width, frames * colours)  # frame-major channels
        outputs = []
        for channels, stride in zip(self.channels, self.strides, strict=True):
            conv = Conv(
                channels,
                (3, 3),
                (stride, stride),
                padding="VALID",
                dtype=self.dtype,
                kernel_init=kernel_init(self.weight_init, conv=True),
            )
            h = nn.relu(conv(h))
            outputs.append(h)
        if self.framewise:
            outputs = [o.reshape((batch, frames) + o.shape[1:]) for o in outputs]
        outputs = [o.astype(jnp.float32) for o in outputs]
        return (outputs[-1], outputs[-2]) if return_skip else outputs[-1]


class StateEncoder(nn.Module):
    """States [B, F, D] -> [B, F * D] (no parameters): proprioceptive observations need no encoder."""

    @nn.compact
    def __call__(self, obs: jax.Array, return_skip: bool = False):
        if obs.ndim != 3:
            raise ValueError(f"expected states [B, F, D], got shape {obs.shape}")
        if return_skip:
            raise ValueError("state observations have no encoder maps (PSRL needs pixels)")
        return obs.reshape(obs.shape[0], -1).astype(jnp.float32)


def flatten_maps(maps: jax.Array, framewise: bool) -> jax.Array:
    """Encoder maps -> [B, D]; per-frame maps are channel-concatenated first (frame-major)."""
    if framewise:
        maps = concat_frames(maps)
    return maps.reshape(maps.shape[0], -1)


class Trunk(nn.Module):
    """flatten -> Linear(latent) -> LayerNorm (-> tanh when `tanh`: SAC-AE; CURL's SAC leaves it out)."""

    latent_dim: int = 50
    framewise: bool = False
    dtype: Any = None
    weight_init: str = "orthogonal"
    tanh: bool = False

    @nn.compact
    def __call__(self, maps: jax.Array) -> jax.Array:
        dense = nn.Dense(self.latent_dim, dtype=self.dtype, kernel_init=kernel_init(self.weight_init))
        x = dense(flatten_maps(maps, self.framewise))
        x = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32)(x.astype(jnp.float32))  # torch's eps (CURL, DrQ)
        return jnp.tanh(x) if self.tanh else x


class MLP(nn.Module):
    """Dense-ReLU layers, then a linear output."""

    hidden: Sequence[int]
    out: int
    dtype: Any = None
    weight_init: str = "orthogonal"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, dtype=self.dtype, kernel_init=kernel_init(self.weight_init))(x))
        return nn.Dense(self.out, dtype=self.dtype, kernel_init=kernel_init(self.weight_init))(x).astype(jnp.float32)


class SACCritic(nn.Module):
    """(obs, action) -> (Q1, Q2), each [B]. `encode` / `q_from_maps` split the pass so the maps of
    one encoder call serve the critic, the actor (detached) and the PSRL losses."""

    encoder: str = "stacked"
    encoder_channels: Sequence[int] = (32, 32, 32, 32)
    encoder_strides: Sequence[int] = (2, 1, 1, 1)
    latent_dim: int = 50
    hidden: Sequence[int] = (1024, 1024)
    dtype: Any = None
    weight_init: str = "orthogonal"
    trunk_tanh: bool = False

    def setup(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        framewise = self.encoder == "framewise"
        if self.encoder == "state":
            self.torso, self.trunk = StateEncoder(), None
        else:
            channels, strides, init = self.encoder_channels, self.encoder_strides, self.weight_init
            self.torso = PixelEncoder(channels, strides, framewise, self.dtype, init)
            self.trunk = Trunk(self.latent_dim, framewise, self.dtype, init, self.trunk_tanh)
        self.q1 = MLP(tuple(self.hidden), 1, self.dtype, self.weight_init)
        self.q2 = MLP(tuple(self.hidden), 1, self.dtype, self.weight_init)

    def encode(self, obs: jax.Array, train: bool = True, return_skip: bool = False):
        """Encoder maps of `obs` (train is accepted for the PSRL modules' interface; no dropout here)."""
        del train
        return self.torso(obs, return_skip)

    def q_from_maps(self, maps: jax.Array, action: jax.Array):
        latent = maps if self.trunk is None else self.trunk(maps)
        x = jnp.concatenate([latent, action.astype(jnp.float32)], axis=-1)
        return self.q1(x)[:, 0], self.q2(x)[:, 0]

    def __call__(self, obs: jax.Array, action: jax.Array):
        return self.q_from_maps(self.encode(obs), action)


class SACActor(nn.Module):
    """Encoder maps (detached by the caller) -> (mean [B, A], log_std [B, A]) of the pre-tanh Gaussian.
    `encoder` is the critic's: the actor's own trunk reads its maps ("state": no trunk)."""

    action_dim: int
    encoder: str = "stacked"
    latent_dim: int = 50
    hidden: Sequence[int] = (1024, 1024)
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    dtype: Any = None
    weight_init: str = "orthogonal"
    trunk_tanh: bool = False

    @nn.compact
    def __call__(self, maps: jax.Array):
        if self.encoder == "state":
            latent = maps
        else:
            framewise = self.encoder == "framewise"
            trunk = Trunk(self.latent_dim, framewise, self.dtype, self.weight_init, self.trunk_tanh, name="trunk")
            latent = trunk(maps)
        out = MLP(tuple(self.hidden), 2 * self.action_dim, self.dtype, self.weight_init, name="mlp")(latent)
        mean, log_std = jnp.split(out, 2, axis=-1)
        # SAC-AE / CURL: squash log_std into [min, max] with tanh (bounded, smooth).
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (jnp.tanh(log_std) + 1.0)
        return mean, log_std


def tanh_gaussian(mean: jax.Array, log_std: jax.Array) -> distrax.Distribution:
    """The policy: a diagonal Gaussian squashed by tanh into (-1, 1)^A (distrax's stable log-det)."""
    return distrax.Transformed(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)), distrax.Block(distrax.Tanh(), 1))
