"""Rainbow + PSRL on Atari 100k (DESIGN.md 1-2, supplementary Tables 1 and 3).

Run:   python launch/atari.py --config configs/rainbow_psrl.py --config.env.game=RoadRunner
Smoke: python launch/atari.py --config configs/rainbow_psrl.py:smoke
Narrow copy of the correspondence module (CPU): --config.psrl.correspondence_width=0.0625

The Rainbow part is configs/rainbow.py unchanged (Table 1). PSRL adds the frame-wise encoder with
dropout (Table 3), K = 5 replayed prediction steps, and every loss term of the paper; the ablations
are the rainbow_psrl_*.py files next to this one. Choices that are ours are marked (ours) here and
in configs/rainbow.py's psrl section.
"""

from configs import rainbow
from psrl_jax.config import PSRL_TERMS


def get_config(variant: str = ""):
    c = rainbow.get_config(variant)
    c.name = "rainbow_psrl" + ("-smoke" if variant == "smoke" else "")
    c.agent.encoder = "framewise"  # Table 3: shared convs per frame; the Q head sees the concatenation
    c.agent.dropout_rate = 0.05  # Table 3 has dropout after each conv; the rate is ours (small)
    c.replay.prediction_steps = 5  # K (ours, after SPR)
    p = c.psrl
    for term in PSRL_TERMS:  # every loss term of the paper
        p[term] = True
    if variant == "smoke":
        # The same modules, narrow and short: a couple of minutes on a 2-core CPU. One refinement
        # level instead of three: XLA:CPU runs the 56x56 transposed convolutions slowly (367 vs 96 ms
        # per smoke update); the tests build the full three-level graph separately.
        c.total_env_steps = 800
        c.eval.every_steps = 400
        c.replay.prediction_steps = 3
        p.correspondence_width = 1 / 16
        p.refinement_levels = 1
        p.transform_hidden = 32
        p.projection_dim = 64
    return c


def ablation(variant: str, name: str, terms: tuple):
    """rainbow_psrl with only `terms` on, named rainbow_psrl_<name> (the rainbow_psrl_*.py configs)."""
    c = get_config(variant)
    c.name = c.name.replace("rainbow_psrl", f"rainbow_psrl_{name}")
    for term in PSRL_TERMS:
        c.psrl[term] = term in terms
    return c
