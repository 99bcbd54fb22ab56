"""DANN + MCC: domain-adversarial training with Minimum Class Confusion on the target
(Jin, Wang, Long & Wang, "Minimum Class Confusion for Versatile Domain Adaptation",
ECCV 2020) — a method past the DANN paper's table, not one of its rows.

DANN aligns the two domains' feature distributions but says nothing of how the target images
fall among the classes: an aligned target image can still sit between two classes. MCC adds
one loss on the unlabelled target batch that penalizes the classifier for confusing classes
with one another:

1. Ŷ = softmax(Z / T), the target batch's class probabilities at temperature T (B × C);
2. each image weighted by its certainty, W_i = B · (1 + e^(−H(Ŷ_i))) / Σ_k (1 + e^(−H(Ŷ_k))),
   H the entropy (the weights are constants of the step, not optimized through);
3. the class-correlation matrix C = Ŷᵀ diag(W) Ŷ, each column divided by its sum;
4. L_MCC = (1/|classes|) Σ_j Σ_(j'≠j) C_jj' — the confusion off the diagonal.

The loss is DANN's (same network, schedules, batches, domain loss) + μ · L_MCC. The two
hyper-parameters are the MCC paper's, not tuned here: T = 2.5 (§4, used for every task of
that paper) and μ = 1 (the trade-off of the paper's authors' reference implementation in
the Transfer-Learning-Library). No transferkit run chose them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.methods.dann import DANN

MCC_TEMPERATURE = 2.5
MCC_WEIGHT = 1.0


def certainty(probabilities: torch.Tensor) -> torch.Tensor:
    """1 + e^(−H(p)) of each row of class probabilities: 2 for a certain image, 1 + 1/C for a
    uniform one; a constant of the step (no gradient). MCC's and CDAN+E's image weights."""
    probabilities = probabilities.detach()
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(dim=1)
    return 1.0 + torch.exp(-entropy)


def minimum_class_confusion(logits: torch.Tensor, temperature: float = MCC_TEMPERATURE,
                            ) -> torch.Tensor:
    """L_MCC of a batch of class logits (B × C): a scalar in [0, 1), 0 when no image's
    probability is shared between classes (each normalized column sums to 1, so the
    off-diagonal share is 1 − trace / C)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits of shape {tuple(logits.shape)}: expected B × C with C ≥ 2")
    probabilities = F.softmax(logits / temperature, dim=1)
    weights = certainty(probabilities)
    weights = len(logits) * weights / weights.sum()
    correlation = (probabilities * weights[:, None]).T @ probabilities
    correlation = correlation / correlation.sum(dim=0, keepdim=True).clamp_min(1e-12)
    classes = logits.shape[1]
    return (correlation.sum() - correlation.trace()) / classes


class DANNMCC(DANN):
    name = "dann_mcc"

    def __init__(self, network: nn.Module, domain_loss: str = "mean", temperature: float = MCC_TEMPERATURE,
                 weight: float = MCC_WEIGHT) -> None:
        super().__init__(network, domain_loss)
        self.temperature = temperature
        self.weight = weight

    def losses(self, images: torch.Tensor, labels: torch.Tensor,
               target_images: torch.Tensor | None, progress: float) -> dict[str, torch.Tensor]:
        values, features = self.adversarial_losses(images, labels, target_images, progress)
        target_logits = self.network.label_predictor(features[len(images):])
        confusion = minimum_class_confusion(target_logits, self.temperature)
        values["loss"] = values["loss"] + self.weight * confusion
        values["mcc_loss"] = confusion.detach()
        return values
