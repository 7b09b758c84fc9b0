"""SAC + PSRL on DeepMind Control from pixels (DESIGN.md 1-2, supplementary Tables 2 and 3).

Run:   python launch/dmc.py --config configs/sac_psrl.py --config.env.task=walker_walk
Smoke: python launch/dmc.py --config configs/sac_psrl.py:smoke

configs/sac.py unchanged, plus the frame-wise encoder (per-frame 35x35x32 maps; the actor and critic
see their concatenation), K replayed prediction steps and every PSRL loss term.

Cost budget (ours; launch/compare_updates.py, docs/BENCHMARKS.md "DMC update cost"): at Table 3's
width the correspondence module's 512-channel 3x3 convolutions at 35x35 would cost ~100x the SAC
update, so it runs at width 1/32 (8-16 channels) with a +-2 local correlation window, no refinement
levels, and K = 1. That keeps the PSRL update at 1.6x the FLOPs of SAC with the same frame-wise
encoder. Measured time on 2-core CPUs: 2.0-2.4x that SAC with XLA's YNNPACK convolutions, 3.4x
with the Eigen convolutions used since (Intel Xeon), 2.4x on an AMD EPYC with AVX-512,
where a +-1 window would give 2.1x (docs/BENCHMARKS.md breaks the update down per named scope: the
correspondence convolutions, the correlation and the warp take 1.2 s of its 2.7 s of op time). The
GPU ratio, which is what these defaults are for, is not measured yet. The frame-wise encoder
itself, which PSRL needs for per-frame maps, costs 2.7x the FLOPs of CURL's stacked encoder
(three 3-channel images through every layer instead of one 9-channel image), so against the
stacked SAC baseline the update is 4.4x the FLOPs (6x the time on that CPU).
"""

from configs import sac
from psrl_jax.config import PSRL_TERMS


def get_config(variant: str = ""):
    c = sac.get_config(variant)
    c.name = "sac_psrl" + (f"-{variant}" if variant in ("smoke", "table2") else "")
    c.agent.encoder = "framewise"
    c.replay.prediction_steps = 1  # K (ours, for the 2x budget; SPR on Atari uses 5)
    for term in PSRL_TERMS:
        c.psrl[term] = True
    if variant == "smoke":
        c.psrl.projection_dim = 16
        c.psrl.transform_hidden = 8
    return c
