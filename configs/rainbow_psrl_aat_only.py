"""Ablation of Rainbow + PSRL. AAT only: action-aware transform with its local and global losses; no
correspondence module.

Run: python launch/atari.py --config configs/rainbow_psrl_aat_only.py[:smoke]
Everything else is configs/rainbow_psrl.py.
"""

from configs import rainbow_psrl


def get_config(variant: str = ""):
    return rainbow_psrl.ablation(variant, "aat_only", ("aat_local", "aat_global"))
