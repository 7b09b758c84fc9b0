"""Ablation of Rainbow + PSRL. AAT only: action-aware transform with its local and global losses; no
correspondence module.

Run: python launch/atari.py --config configs/rainbow_psrl_aat_only.py[:smoke]
Everything else is configs/rainbow_psrl.py.
"""

from configs import rainbow_psrl


def get_config(variant: str = ""):
    c = rainbow_psrl.get_config(variant)
    c.name = c.name.replace("rainbow_psrl", "rainbow_psrl_aat_only")
    c.psrl.cat_local = False
    c.psrl.cat_global = False
    c.psrl.aat_local = True
    c.psrl.aat_global = True
    c.psrl.internal = False
    return c
