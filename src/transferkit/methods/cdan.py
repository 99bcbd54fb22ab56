"""CDAN+E: conditional domain-adversarial training with entropy conditioning (Long, Cao,
Wang & Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018) — a method past
the DANN paper's table, not one of its rows.

DANN's domain classifier sees the features f alone, so it can be fooled by matching the two
domains' feature distributions as wholes, even with target images of one class sitting where
the source images of another lie. CDAN shows the domain classifier f *together with* the
classifier's prediction g (class probabilities), through the multilinear map f ⊗ g, so that
fooling it needs the joint distribution of features and predictions to match — the classes'
feature distributions one by one, as far as g tells the classes apart:

1. g = softmax(label predictor(f)), for the source and the target images of the joint batch,
   held constant (no gradient reaches the label predictor through g — as the MCC weights
   here, and as the authors' Transfer-Learning-Library does);
2. T(f, g) = f ⊗ g flattened (d_f · C values) when d_f · C ≤ 4096, and otherwise the
   randomized multilinear map (R_f f) ⊙ (R_g g) / √d with d = 1024 and R_f, R_g fixed
   standard-normal matrices drawn once (the paper's rule and size; the MNIST network's
   768 features × 10 classes and the GTSRB network's 4096 × 43 both take the randomized map);
3. entropy conditioning (the "+E"): each image's domain loss is weighted by
   w = 1 + e^(−H(g)), so that images the classifier is sure of count more; the weights are
   normalized to average 1 within the source half and within the target half (each domain
   keeps its share, as in the authors' code);
4. the domain classifier and everything else are DANN's: the same hidden layers for the
   network (only its input size changes), the gradient-reversal layer with λ_p, the learning
   rate schedule, the joint-mean domain loss, batches of 64 + 64, trade-off 1.

Nothing here was tuned by a transferkit run: every choice above is the CDAN paper's or DANN's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transferkit.methods.dann import DANN
from transferkit.methods.mcc import certainty
from transferkit.models import gradient_reversal
from transferkit.models.digit_networks import DigitNetwork, initialize, mlp
from transferkit.training.schedules import grl_coefficient

FULL_MAP_LIMIT = 4096  # f ⊗ g up to this many values; the randomized map above it
RANDOMIZED_DIM = 1024


def entropy_weights(probabilities: torch.Tensor, sources: int) -> torch.Tensor:
    """1 + e^(−H(g)) for each row of ``probabilities``, normalized to mean 1 over the first
    ``sources`` rows and over the rest separately; constants (no gradient)."""
    weights = certainty(probabilities)
    source, target = weights[:sources], weights[sources:]
    return torch.cat([source / source.mean(), target / target.mean()])


class CDAN(DANN):
    name = "cdan"

    def __init__(self, network: DigitNetwork, domain_loss: str = "mean",
                 entropy_conditioning: bool = True) -> None:
        super().__init__(network, domain_loss)
        self.entropy_conditioning = entropy_conditioning
        classes = network.label_predictor[-1].out_features
        self.randomized = network.feature_dim * classes > FULL_MAP_LIMIT
        width = RANDOMIZED_DIM if self.randomized else network.feature_dim * classes
        if self.randomized:  # drawn from the run's seeded generator; saved with the model
            self.register_buffer("feature_projection",
                                 torch.randn(network.feature_dim, RANDOMIZED_DIM))
            self.register_buffer("class_projection", torch.randn(classes, RANDOMIZED_DIM))
        # the domain classifier, its input widened to the conditioned features
        if "discriminator" in self._modules:
            self.discriminator = self.make_domain_classifier(width)
        else:
            network.domain_classifier = mlp(width, network.spec.domain_hidden, 1)
            initialize(network.domain_classifier)

    def condition(self, features: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """T(f, g): the multilinear map of features and class probabilities, or its randomized
        approximation (item 2 of the module's text)."""
        if self.randomized:
            return ((features @ self.feature_projection)
                    * (probabilities @ self.class_projection) / math.sqrt(RANDOMIZED_DIM))
        return (probabilities.unsqueeze(2) * features.unsqueeze(1)).flatten(1)

    def losses(self, images: torch.Tensor, labels: torch.Tensor,
               target_images: torch.Tensor | None, progress: float) -> dict[str, torch.Tensor]:
        assert target_images is not None
        features = self.network.features(torch.cat([images, target_images]))
        logits = self.network.label_predictor(features)
        class_loss = F.cross_entropy(logits[: len(images)], labels)
        probabilities = F.softmax(logits, dim=1).detach()
        coefficient = grl_coefficient(progress)
        conditioned = self.condition(gradient_reversal(features, coefficient), probabilities)
        domain_logits = self.domain_classifier(conditioned).squeeze(1)
        weights = (entropy_weights(probabilities, len(images))
                   if self.entropy_conditioning else None)
        return self.combine(class_loss, domain_logits, len(images), coefficient, weights)
