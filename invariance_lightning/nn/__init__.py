"""Shift-robust downsampling layers: BlurPool (Zhang 2019), adaptive polyphase sampling (Chaman & Dokmanic 2021) and
learnable polyphase sampling (Rojas-Gomez et al. 2022)."""

from invariance_lightning.nn.aps import APS2d, APS2dFollower, PolyphaseLeader, polyphase_norms, take_polyphase
from invariance_lightning.nn.blurpool import BlurPool2d, binomial_filter2d
from invariance_lightning.nn.lps import LPS2d, polyphase_components

__all__ = [
    "APS2d",
    "APS2dFollower",
    "BlurPool2d",
    "LPS2d",
    "PolyphaseLeader",
    "binomial_filter2d",
    "polyphase_components",
    "polyphase_norms",
    "take_polyphase",
]
