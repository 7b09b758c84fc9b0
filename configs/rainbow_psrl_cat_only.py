"""Ablation of Rainbow + PSRL. CAT only: correspondence-aware transform (local and global) and the
internal correspondence; no AAT.

Run: python launch/atari.py --config configs/rainbow_psrl_cat_only.py[:smoke]
Everything else is configs/rainbow_psrl.py.
"""

from configs import rainbow_psrl


def get_config(variant: str = ""):
    c = rainbow_psrl.get_config(variant)
    c.name = c.name.replace("rainbow_psrl", "rainbow_psrl_cat_only")
    c.psrl.cat_local = True
    c.psrl.cat_global = True
    c.psrl.aat_local = False
    c.psrl.aat_global = False
    c.psrl.internal = True
    return c
