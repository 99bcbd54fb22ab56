"""DANN: domain-adversarial training (Ganin et al. 2016, JMLR 17(59), Algorithm 1, eq. 9-10).

The feature extractor G_f feeds a label predictor G_y (trained on labelled source) and,
through a gradient-reversal layer, a domain classifier G_d (trained to tell source from
target). Minimizing the domain loss through the reversal *maximizes* it for G_f, which so
learns features the domain classifier cannot separate:

    E(θf, θy, θd) = 1/n Σ L_y(source) − λ · 1/(n+n') Σ L_d(source and target)

The domain loss is one mean over the joint batch of n source + n' target images, as a
logistic loss layer over the concatenated batch computes it by default (Caffe's and
TensorFlow's batch normalization of a loss; the public TensorFlow reimplementation of the
paper's MNIST experiment does this). Eq. 9 of the paper, read
literally, sums the source mean and the target mean: twice the adversarial pressure when
n = n'. We measured both on MNIST → MNIST-M (seed 0, 10 epochs, recorded in
``benchmarks/results/dann_design_choices/``): with the sum the domain classifier and the features
oscillate, source-validation accuracy falls to ≈ 0.965 and target accuracy with it; with the
joint mean source validation stays at ≈ 0.979. ``domain_loss="sum"`` keeps the literal form.

λ follows λ_p = 2/(1+exp(−10p)) − 1 (§5.2.2). Source and target go through G_f as one
batch, so both see the same layer statistics and one forward pass serves both losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.methods.base import Method
from transferkit.models import gradient_reversal
from transferkit.models.digit_networks import initialize, mlp
from transferkit.training.schedules import grl_coefficient

DOMAIN_LOSSES = ("mean", "sum")


class DANN(Method):
    name = "dann"
    uses_target = True

    def __init__(self, network: nn.Module, domain_loss: str = "mean") -> None:
        super().__init__(network)
        if domain_loss not in DOMAIN_LOSSES:
            raise ValueError(f"domain_loss {domain_loss!r}: expected one of "
                             f"{', '.join(DOMAIN_LOSSES)}")
        self.domain_loss = domain_loss
        if not hasattr(network, "domain_classifier"):
            self.discriminator = self.make_domain_classifier(network.feature_dim)

    def make_domain_classifier(self, in_features: int) -> nn.Module:
        """The method's own domain classifier for a network that brings none (every network
        but the paper's digit networks): an MLP of the network's ``domain_hidden`` widths."""
        classifier = mlp(in_features, tuple(self.network.domain_hidden), 1)
        initialize(classifier)
        return classifier

    @property
    def domain_classifier(self) -> nn.Module:
        """The paper's networks carry their domain classifier (every digit run has saved it
        there); any other network's is the method's own."""
        own = self._modules.get("discriminator")
        return own if own is not None else self.network.domain_classifier

    def losses(self, images: torch.Tensor, labels: torch.Tensor,
               target_images: torch.Tensor | None, progress: float) -> dict[str, torch.Tensor]:
        return self.adversarial_losses(images, labels, target_images, progress)[0]

    def adversarial_losses(self, images: torch.Tensor, labels: torch.Tensor,
                           target_images: torch.Tensor | None, progress: float,
                           ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """DANN's losses, and the features of the joint batch (source first) they came from,
        for a method that adds a term on the same forward pass."""
        assert target_images is not None
        features = self.network.features(torch.cat([images, target_images]))
        source_features = features[: len(images)]
        class_loss = F.cross_entropy(self.network.label_predictor(source_features), labels)
        coefficient = grl_coefficient(progress)
        domain_logits = self.domain_classifier(
            gradient_reversal(features, coefficient)
        ).squeeze(1)
        return self.combine(class_loss, domain_logits, len(images), coefficient), features

    def combine(self, class_loss: torch.Tensor, domain_logits: torch.Tensor, sources: int,
                coefficient: float, weights: torch.Tensor | None = None,
                ) -> dict[str, torch.Tensor]:
        """The step's losses from the domain classifier's logits of the joint batch (its first
        ``sources`` images are source, label 0; the rest target, label 1). ``weights``, one per
        image, weight the domain loss (each domain's weights should average 1)."""
        domain_labels = torch.zeros_like(domain_logits)
        domain_labels[sources:] = 1.0
        per_sample = F.binary_cross_entropy_with_logits(domain_logits, domain_labels,
                                                        reduction="none")
        if weights is not None:
            per_sample = per_sample * weights
        if self.domain_loss == "mean":
            domain_loss = per_sample.mean()
        else:
            domain_loss = per_sample[:sources].mean() + per_sample[sources:].mean()
        domain_accuracy = ((domain_logits > 0).float() == domain_labels).float().mean()
        return {
            "loss": class_loss + domain_loss,
            "class_loss": class_loss.detach(),
            "domain_loss": domain_loss.detach(),
            "domain_accuracy": domain_accuracy.detach(),
            "grl_coefficient": torch.tensor(coefficient),
        }
