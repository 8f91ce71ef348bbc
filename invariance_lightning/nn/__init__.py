"""Shift-robust layers: BlurPool (Zhang 2019), adaptive polyphase sampling (Chaman & Dokmanic 2021), learnable
polyphase sampling (Rojas-Gomez et al. 2022), alias-free subsampling and activations (Michaeli et al. 2023), and
circularly padded convs without the padded copy."""

from invariance_lightning.nn.alias_free import AliasFreeDownsample, InputLowpass, PolynomialActivation, ideal_lowpass
from invariance_lightning.nn.aps import APS2d, APS2dFollower, PolyphaseLeader, polyphase_norms, take_polyphase
from invariance_lightning.nn.blurpool import BlurPool2d, binomial_filter2d
from invariance_lightning.nn.circular import CircularConv2d, circular_conv2d
from invariance_lightning.nn.lps import LPS2d, polyphase_components

__all__ = [
    "APS2d",
    "APS2dFollower",
    "AliasFreeDownsample",
    "BlurPool2d",
    "CircularConv2d",
    "InputLowpass",
    "LPS2d",
    "PolynomialActivation",
    "PolyphaseLeader",
    "binomial_filter2d",
    "circular_conv2d",
    "ideal_lowpass",
    "polyphase_components",
    "polyphase_norms",
    "take_polyphase",
]
