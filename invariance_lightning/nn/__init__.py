"""Shift-robust downsampling layers: BlurPool (Zhang 2019) and adaptive polyphase sampling (Chaman & Dokmanic 2021)."""

from invariance_lightning.nn.aps import APS2d, APS2dFollower, polyphase_norms, take_polyphase
from invariance_lightning.nn.blurpool import BlurPool2d, binomial_filter2d

__all__ = ["APS2d", "APS2dFollower", "BlurPool2d", "binomial_filter2d", "polyphase_norms", "take_polyphase"]
