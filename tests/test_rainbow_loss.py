"""C51 double-Q loss against an independent NumPy implementation of Bellemare et al.'s projection,
and the KL priority against SPR's formula (src/algos.py dist_rl_loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psrl_jax.losses.rainbow import c51_support, categorical_double_q_loss, q_values

V_MIN, V_MAX, N = -10.0, 10.0, 51


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _project(probs, reward, discount, v_min, v_max, num_atoms):
    """Algorithm 1 of Bellemare et al. (2017): clip Tz, split each atom's mass to floor/ceil."""
    delta = (v_max - v_min) / (num_atoms - 1)
    atoms = v_min + delta * np.arange(num_atoms)
    m = np.zeros(num_atoms)
    for j in range(num_atoms):
        tz = np.clip(reward + discount * atoms[j], v_min, v_max)
        b = (tz - v_min) / delta
        lo, hi = int(np.floor(b)), int(np.ceil(b))
        if lo == hi:  # Tz lands on an atom: all mass there (the paper's pseudo-code drops it)
            m[lo] += probs[j]
        else:
            m[lo] += probs[j] * (hi - b)
            m[hi] += probs[j] * (b - lo)
    return m


def _reference_loss(online, actions, returns, discounts, target, selector, double_q):
    """Cross-entropy and SPR's KL priority: KL(clamp(m, 1e-6, 1) || p), clamped to [1e-6, 1e6]."""
    atoms = np.linspace(V_MIN, V_MAX, N)
    losses, kls = [], []
    for i in range(online.shape[0]):
        chooser = selector[i] if double_q else target[i]
        a_star = np.argmax((_softmax(chooser) * atoms).sum(-1))
        m = _project(_softmax(target[i, a_star]), returns[i], discounts[i], V_MIN, V_MAX, N)
        log_p = np.log(_softmax(online[i, actions[i]]))
        losses.append(-(m * log_p).sum())
        clamped = np.clip(m, 1e-6, 1.0)
        kls.append(np.clip(np.sum(clamped * (np.log(clamped) - log_p)), 1e-6, 1e6))
    return np.array(losses), np.array(kls)


def _random_batch(seed, batch=16, num_actions=5):
    rng = np.random.default_rng(seed)
    online = rng.normal(size=(batch, num_actions, N)) * 2
    target = rng.normal(size=(batch, num_actions, N)) * 2
    selector = rng.normal(size=(batch, num_actions, N)) * 2
    actions = rng.integers(0, num_actions, size=batch)
    returns = rng.uniform(-15, 15, size=batch)  # includes returns outside the support
    discounts = rng.choice([0.0, 0.99**10, 0.5, 1.0], size=batch)
    returns[:3] = [0.0, 1.2, -10.0]  # with discount 0: targets exactly on atoms
    discounts[:3] = 0.0
    return online, actions, returns, discounts, target, selector


def test_c51_support():
    atoms = c51_support(N, V_MIN, V_MAX)
    assert atoms.shape == (N,) and atoms.dtype == jnp.float32
    np.testing.assert_allclose(atoms, np.linspace(V_MIN, V_MAX, N), atol=1e-6)


@pytest.mark.parametrize("double_q", [True, False])
def test_matches_numpy_reference(double_q):
    online, actions, returns, discounts, target, selector = _random_batch(0)
    expected, expected_kl = _reference_loss(online, actions, returns, discounts, target, selector, double_q)
    loss, kl = jax.jit(categorical_double_q_loss, static_argnames="double_q")(
        jnp.asarray(online, jnp.float32),
        jnp.asarray(actions),
        jnp.asarray(returns, jnp.float32),
        jnp.asarray(discounts, jnp.float32),
        jnp.asarray(target, jnp.float32),
        jnp.asarray(selector, jnp.float32),
        c51_support(N, V_MIN, V_MAX),
        double_q=double_q,
    )
    assert loss.shape == kl.shape == (online.shape[0],)
    np.testing.assert_allclose(loss, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(kl, expected_kl, atol=1e-5, rtol=1e-4)
    # Cross-entropy = KL + the target's entropy, so the two priorities differ unless the target is sharp.
    assert np.max(np.abs(np.asarray(loss) - np.asarray(kl))) > 0.1


def peak(i):
    """Near-one-hot logits: all mass on atom i."""
    return jnp.full((N,), -20.0).at[i].set(20.0)


def test_double_q_uses_selector_argmax():
    atoms = c51_support(N, V_MIN, V_MAX)
    # Target net prefers action 0 (mass at +10); its action-1 mass sits at -10.
    target = jnp.stack([peak(N - 1), peak(0)])[None]
    # Selector (online net at s_t) prefers action 1.
    selector = jnp.stack([peak(0), peak(N - 1)])[None]
    online = jnp.stack([peak(0), peak(0)])[None]  # predicts -10 for the taken action 0
    args = (
        online,
        jnp.array([0]),
        jnp.array([0.0]),
        jnp.array([1.0]),
        target,
        selector,
        atoms,
    )
    loss_double, _ = categorical_double_q_loss(*args, double_q=True)
    loss_single, _ = categorical_double_q_loss(*args, double_q=False)
    # Double-Q bootstraps from the target's action 1 (-10): matches the online prediction.
    assert float(loss_double[0]) < 1e-3
    # Without double-Q the target's own argmax (action 0, +10) is used: large loss.
    assert float(loss_single[0]) > 10.0
    np.testing.assert_array_equal(jnp.argmax(q_values(selector, atoms), -1), [1])


def test_gradient_only_through_online_logits():
    online, actions, returns, discounts, target, selector = _random_batch(1, batch=4)
    atoms = c51_support(N, V_MIN, V_MAX)

    def total(online_logits, target_logits):
        return categorical_double_q_loss(
            online_logits,
            actions,
            returns,
            discounts,
            target_logits,
            selector,
            atoms,
            True,
        )[0].sum()

    g_online, g_target = jax.jit(jax.grad(total, argnums=(0, 1)))(
        jnp.asarray(online, jnp.float32), jnp.asarray(target, jnp.float32)
    )
    assert float(jnp.abs(g_online).sum()) > 0
    assert float(jnp.abs(g_target).sum()) == 0
