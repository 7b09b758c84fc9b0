"""Ablation of Rainbow + PSRL. CAT only: correspondence-aware transform (local and global) and the
internal correspondence; no AAT.

Run: python launch/atari.py --config configs/rainbow_psrl_cat_only.py[:smoke]
Everything else is configs/rainbow_psrl.py.
"""

from configs import rainbow_psrl


def get_config(variant: str = ""):
    return rainbow_psrl.ablation(variant, "cat_only", ("cat_local", "cat_global", "internal"))
