"""Rainbow Q network: Atari encoder + dueling C51 head (agents/rainbow.py builds it from its hyperparameters)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from psrl_jax.networks.encoders import AtariEncoder, concat_frames
from psrl_jax.networks.heads import DuelingC51Head, scale_gradient
from psrl_jax.ops.normalize import minmax_normalize

ENCODERS = ("stacked", "framewise")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(agent_config: ml_collections.ConfigDict):
    """The networks' compute dtype from config.agent.compute_dtype ("float32" or "bfloat16");
    parameters, optimiser state and losses stay float32 either way."""
    name = agent_config.compute_dtype
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {name!r}")
    return COMPUTE_DTYPES[name]


class RainbowQNetwork(nn.Module):
    """obs float32 [B, F, H, W] in [0, 1] -> C51 logits [B, A, N].

    Parameters live under "torso" (encoder) and "head", so an auxiliary loss can use
    (or EMA-copy) the encoder alone. `encode` and `q_head` split the forward pass for
    losses that reuse the feature maps.

    `dtype` is the compute dtype of every conv/dense layer (None: float32; bfloat16 for mixed
    precision). Parameters are float32, and what leaves the module is float32: the maps of
    `encode` and the logits of `q_head` (which casts the maps back to `dtype` for its layers).

    `renormalize`: the head reads the maps min-max normalised per sample over (h, w, C), as SPR's
    renormalize(conv_out, -3); `dueling_grad_scale` scales the gradient into the dueling head's
    input (SPR's grad_scale 2**-0.5), not its value.
    """

    num_actions: int
    num_atoms: int = 51
    hidden_size: int = 256
    noisy: bool = True
    sigma0: float = 0.5
    dueling: bool = True
    encoder: str = "stacked"
    encoder_channels: Sequence[int] = (32, 64, 64)
    dropout_rate: float = 0.0
    renormalize: bool = False
    dueling_grad_scale: float = 1.0
    dtype: Any = None

    def setup(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        self.torso = AtariEncoder(
            channels=tuple(self.encoder_channels),
            dropout_rate=self.dropout_rate,
            framewise=self.encoder == "framewise",
            dtype=self.dtype,
        )
        self.head = DuelingC51Head(
            num_actions=self.num_actions,
            num_atoms=self.num_atoms,
            hidden_size=self.hidden_size,
            noisy=self.noisy,
            sigma0=self.sigma0,
            dueling=self.dueling,
            dtype=self.dtype,
        )

    def encode(self, obs: jax.Array, train: bool, return_skip: bool = False):
        """[B, 7, 7, C] (stacked) or per-frame [B, F, 7, 7, C] (framewise); with return_skip also
        the previous layer's maps (see AtariEncoder)."""
        out = self.torso(obs, train, return_skip)
        return jax.tree.map(lambda x: x.astype(jnp.float32), out)

    def q_head(self, features: jax.Array, noisy_sample: bool) -> jax.Array:
        if self.encoder == "framewise":
            features = concat_frames(features)
        if self.renormalize:
            features = minmax_normalize(features, num_feature_dims=3)
        if self.dueling and self.dueling_grad_scale != 1.0:
            features = scale_gradient(features, self.dueling_grad_scale)
        return self.head(features.reshape(features.shape[0], -1), noisy_sample)

    def __call__(self, obs: jax.Array, train: bool, noisy_sample: bool) -> jax.Array:
        return self.q_head(self.encode(obs, train), noisy_sample)
