"""Q-value heads: factorised noisy linear layer and the dueling C51 head of Rainbow.

`dtype` is the compute dtype (None: infer from inputs and params, i.e. float32); parameters are
always float32 (flax's param_dtype default) and the head's logits are returned in float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """x in the forward pass (exactly), `scale` times the incoming gradient in the backward pass."""
    frozen = jax.lax.stop_gradient(x)
    return frozen + scale * (x - frozen)


def _scaled_noise(key: jax.Array, size: int) -> jax.Array:
    """f(x) = sign(x) sqrt(|x|) of standard normal noise (Fortunato et al., 2018)."""
    x = jax.random.normal(key, (size,))
    return jnp.sign(x) * jnp.sqrt(jnp.abs(x))


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class NoisyDense(nn.Module):
    """Linear layer with factorised Gaussian weight noise (Fortunato et al., 2018).

    w = mu_w + sigma_w * (f(eps_in) f(eps_out)^T), b = mu_b + sigma_b * f(eps_out);
    one noise sample per call, shared by the whole batch (as in Rainbow). Noise comes
    from the flax rng stream "noise"; `noisy=False` uses the mean weights only. The noise is drawn
    in float32 and cast, with the float32 parameters and the input, to `dtype` for the matmuls.
    """

    features: int
    sigma0: float = 0.5
    use_bias: bool = True
    dtype: Any = None  # compute dtype; None: inferred from the input and params (float32)

    @nn.compact
    def __call__(self, x: jax.Array, noisy: bool) -> jax.Array:
        in_features = x.shape[-1]
        bound = 1.0 / jnp.sqrt(in_features)
        sigma_init = nn.initializers.constant(self.sigma0 / jnp.sqrt(in_features))
        shape = (in_features, self.features)
        mu_kernel = self.param("mu_kernel", _uniform(bound), shape)
        sigma_kernel = self.param("sigma_kernel", sigma_init, shape)
        x, mu_kernel, sigma_kernel = nn.dtypes.promote_dtype(x, mu_kernel, sigma_kernel, dtype=self.dtype)
        y = x @ mu_kernel
        if noisy:
            in_key, out_key = jax.random.split(self.make_rng("noise"))
            eps_in = _scaled_noise(in_key, in_features).astype(x.dtype)
            eps_out = _scaled_noise(out_key, self.features).astype(x.dtype)
            # x @ (sigma * outer(eps_in, eps_out)) without building the [in, out] noise.
            y = y + ((x * eps_in) @ sigma_kernel) * eps_out
        if self.use_bias:
            mu_bias = self.param("mu_bias", _uniform(bound), (self.features,))
            sigma_bias = self.param("sigma_bias", sigma_init, (self.features,))
            mu_bias, sigma_bias = nn.dtypes.promote_dtype(mu_bias, sigma_bias, dtype=x.dtype)
            y = y + mu_bias
            if noisy:
                y = y + sigma_bias * eps_out
        return y


class DuelingC51Head(nn.Module):
    """Flat features [B, D] -> C51 logits [B, A, N].

    dueling=True: separate value and advantage MLPs (each D -> hidden -> out, as in
    DER/SPR), combined per atom as logits = V + A - mean_a A. dueling=False: a single
    MLP D -> hidden -> A*N. Layers are NoisyDense when `noisy`, else nn.Dense; with
    noisy layers, `noisy_sample=False` acts with the mean weights. The layers compute in `dtype`;
    their outputs are cast to float32 before the dueling combination, so the logits are float32.
    """

    num_actions: int
    num_atoms: int = 51
    hidden_size: int = 256
    noisy: bool = True
    sigma0: float = 0.5
    dueling: bool = True
    dtype: Any = None  # compute dtype of the layers; None: float32

    def _dense(self, features: int, name: str, x: jax.Array, noisy_sample: bool):
        if self.noisy:
            return NoisyDense(features, sigma0=self.sigma0, dtype=self.dtype, name=name)(x, noisy_sample)
        return nn.Dense(features, dtype=self.dtype, name=name)(x)

    def _mlp(self, prefix: str, out: int, x: jax.Array, noisy_sample: bool):
        h = nn.relu(self._dense(self.hidden_size, f"{prefix}_hidden", x, noisy_sample))
        return self._dense(out, f"{prefix}_out", h, noisy_sample).astype(jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, noisy_sample: bool) -> jax.Array:
        shape = (x.shape[0], self.num_actions, self.num_atoms)
        if not self.dueling:
            return self._mlp("q", self.num_actions * self.num_atoms, x, noisy_sample).reshape(shape)
        value = self._mlp("value", self.num_atoms, x, noisy_sample)[:, None, :]
        advantage = self._mlp("advantage", self.num_actions * self.num_atoms, x, noisy_sample)
        advantage = advantage.reshape(shape)
        return value + advantage - advantage.mean(axis=1, keepdims=True)
