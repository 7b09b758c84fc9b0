"""Ablation of Rainbow + PSRL. SPR-like: the action-aware transform with the global loss only (SPR's
objective on the frame-wise encoder).

Run: python launch/atari.py --config configs/rainbow_psrl_spr_like.py[:smoke]
Everything else is configs/rainbow_psrl.py.
"""

from configs import rainbow_psrl


def get_config(variant: str = ""):
    c = rainbow_psrl.get_config(variant)
    c.name = c.name.replace("rainbow_psrl", "rainbow_psrl_spr_like")
    c.psrl.cat_local = False
    c.psrl.cat_global = False
    c.psrl.aat_local = False
    c.psrl.aat_global = True
    c.psrl.internal = False
    return c
