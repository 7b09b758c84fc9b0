"""Ablation of Rainbow + PSRL. SPR-like: the action-aware transform with the global loss only (SPR's
objective on the frame-wise encoder).

Run: python launch/atari.py --config configs/rainbow_psrl_spr_like.py[:smoke]
Everything else is configs/rainbow_psrl.py.
"""

from configs import rainbow_psrl


def get_config(variant: str = ""):
    return rainbow_psrl.ablation(variant, "spr_like", ("aat_global",))
