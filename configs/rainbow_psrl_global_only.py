"""Ablation of Rainbow + PSRL. Global losses only: cosine losses of CAT and AAT; no local L1 terms.

Run: python launch/atari.py --config configs/rainbow_psrl_global_only.py[:smoke]
Everything else is configs/rainbow_psrl.py.
"""

from configs import rainbow_psrl


def get_config(variant: str = ""):
    c = rainbow_psrl.get_config(variant)
    c.name = c.name.replace("rainbow_psrl", "rainbow_psrl_global_only")
    c.psrl.cat_local = False
    c.psrl.cat_global = True
    c.psrl.aat_local = False
    c.psrl.aat_global = True
    c.psrl.internal = False
    return c
