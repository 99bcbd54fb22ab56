"""Networks: the DANN paper's digit/sign networks and the gradient-reversal layer."""

from transferkit.models.digit_networks import NETWORKS, DigitNetwork
from transferkit.models.gradient_reversal import GradientReversal, gradient_reversal

__all__ = ["NETWORKS", "DigitNetwork", "GradientReversal", "gradient_reversal"]
