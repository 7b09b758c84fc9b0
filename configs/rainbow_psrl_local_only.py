"""Ablation of Rainbow + PSRL. Local losses only: L1 of CAT, AAT and the internal correspondence; no
global (vector) losses.

Run: python launch/atari.py --config configs/rainbow_psrl_local_only.py[:smoke]
Everything else is configs/rainbow_psrl.py.
"""

from configs import rainbow_psrl


def get_config(variant: str = ""):
    return rainbow_psrl.ablation(variant, "local_only", ("cat_local", "aat_local", "internal"))
