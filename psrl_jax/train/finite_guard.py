"""The non-finite guard: a loss, gradient norm or parameter that became NaN or infinite stops the run.

A diverged update leaves NaN in the parameters and every later update keeps it there, so a run that
went on would spend hours writing NaN metrics and would overwrite good checkpoints with bad ones
(`checkpoint.keep` keeps only the last few). The trainer checks at every log point (the window's
mean losses and gradient norms, which are NaN when any dispatch's was, and every floating array of
the agent state: parameters, targets, optimiser moments) and before every checkpoint (the agent
state). The first failure raises NonFiniteError naming the env step, the seed and the term; the
checkpoints written before it stay as they are and none is written from the bad state.
"""

import jax
import jax.numpy as jnp
import numpy as np

from psrl_jax.train.common import SeedAxis, vmap_seeds

GUARDED_METRIC_PREFIXES = ("loss/", "optim/")  # losses and gradient norms (agents' update metrics)


class NonFiniteError(RuntimeError):
    pass


def leaf_finiteness(agent_state) -> dict:
    """{"critic_params/params/q1/...": bool []} for every floating array of one seed's agent state."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(agent_state)
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): jnp.all(jnp.isfinite(leaf))
        for path, leaf in leaves
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    }


def nonfinite_metrics(means: dict) -> list[tuple[int, str, float]]:
    """(row, name, value) of every guarded metric (means: name -> [local seeds]) that is not finite."""
    found = []
    for name in sorted(means):
        if name.startswith(GUARDED_METRIC_PREFIXES):
            values = np.asarray(means[name], np.float64).reshape(-1)
            found += [(row, name, float(v)) for row, v in enumerate(values) if not np.isfinite(v)]
    return found


class FiniteGuard:
    """Checks this process's seeds and stops every process together (the flags are gathered, so no
    process is left waiting in a collective while another raised)."""

    def __init__(self, seeds: SeedAxis):
        self.seeds = seeds
        self._leaf_finiteness = seeds.jit(vmap_seeds(leaf_finiteness))

    def check(self, env_step: int, agent_state, metric_means: dict | None = None, kept_steps=list) -> None:
        """Raises NonFiniteError when a guarded metric or an agent-state array of any seed is not finite;
        `kept_steps()` (called only then) lists the checkpoints the message names as kept."""
        found = nonfinite_metrics(metric_means or {})
        finite = self.seeds.to_host(self._leaf_finiteness(agent_state))  # path -> [local seeds] bool
        found += [(row, path, None) for path, flags in finite.items() for row in np.flatnonzero(~np.asarray(flags))]
        bad_rows = np.zeros(self.seeds.num_local, bool)
        bad_rows[[row for row, _, _ in found]] = True
        if not self.seeds.gather(bad_rows).any():
            return
        raise NonFiniteError(self.message(env_step, found, kept_steps()))

    def message(self, env_step: int, found: list, kept_steps) -> str:
        """Per seed: the non-finite losses and gradient norms, then how many state arrays and the first two."""
        parts = []
        for row in sorted({row for row, _, _ in found}):
            index = self.seeds.local_rows.start + row
            metrics = [f"{name} = {value}" for r, name, value in found if r == row and value is not None]
            arrays = [name for r, name, value in found if r == row and value is None]
            arrays.sort(key=lambda name: "opt_state" in name)  # parameters before optimiser moments
            if arrays:
                first = ", ".join(arrays[:2]) + (", ..." if len(arrays) > 2 else "")
                metrics.append(f"{len(arrays)} state arrays ({first})")
            parts.append(f"seed {self.seeds.first_seed + index} (index {index}): {', '.join(metrics)}")
        where = "; ".join(parts) or "on another process's seeds"
        kept = f"checkpoints at env steps {list(kept_steps)} are kept" if kept_steps else "no checkpoint was written"
        return f"non-finite values at env step {env_step}: {where}. The run stopped: {kept}, none from this state."
