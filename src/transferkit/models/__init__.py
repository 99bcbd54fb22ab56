"""Networks: the DANN paper's digit/sign networks, the gradient-reversal layer, and the backbone
registry (:mod:`backbones`: pretrained bases by name, as ordered stages; :mod:`lite0`: the
offline ImageNet weights of EfficientNet-Lite0)."""

from transferkit.models.digit_networks import NETWORKS, DigitNetwork
from transferkit.models.gradient_reversal import GradientReversal, gradient_reversal

__all__ = ["NETWORKS", "DigitNetwork", "GradientReversal", "gradient_reversal"]
