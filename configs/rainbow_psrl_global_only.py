"""Ablation of Rainbow + PSRL. Global losses only: cosine losses of CAT and AAT; no local L1 terms.

Run: python launch/atari.py --config configs/rainbow_psrl_global_only.py[:smoke]
Everything else is configs/rainbow_psrl.py.
"""

from configs import rainbow_psrl


def get_config(variant: str = ""):
    return rainbow_psrl.ablation(variant, "global_only", ("cat_global", "aat_global"))
