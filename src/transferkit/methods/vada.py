"""VADA on DANN's protocol: domain-adversarial training plus the cluster assumption
(Shu, Bui, Narui & Ermon, "A DIRT-T Approach to Unsupervised Domain Adaptation", ICLR 2018,
§3–4: Virtual Adversarial Domain Adaptation) — a method past the DANN paper's table.

DANN makes the two domains' feature distributions alike but does not stop the classifier's
decision boundary from running through dense regions of target images. VADA adds two terms
that push it out of them (the cluster assumption):

- the conditional entropy of the classifier on the target batch,
  L_c = −mean_i Σ_k p_ik log p_ik, which rewards confident target predictions;
- virtual adversarial training (Miyato et al. 2018): for each image x, the perturbation r of
  norm ε that changes the prediction most, found by one power iteration (a random direction
  of norm ξ, the gradient of KL(p(x) ‖ p(x + ξd)) with respect to it, normalised), and the
  loss L_v = KL(p(x) ‖ p(x + r)) with p(x) held constant: the classifier is made locally
  smooth, on source and on target images.

The loss of a step is DANN's (the same network, schedules, batches and domain loss through the
gradient-reversal layer with λ_p) + λ_s · L_v(source) + λ_t · (L_c(target) + L_v(target)).

Where the settings come from (none was chosen by a transferkit run):

- λ_s = 1, λ_t = 0.01, ξ = 1e-6 and one power iteration: the defaults of the authors' code
  (github.com/RuiShu/dirt-t, ``run_dirtt.py`` and ``extra_layers.py``). The paper's appendix
  lists per-task values which we could not consult offline; these defaults are what the code
  runs when no task is named.
- ε: the authors' radius is 3.5 for 32 × 32 × 3 images scaled to [−1, 1], a perturbation of
  root-mean-square 3.5 / √3072 ≈ 0.063 per value, 3.2 % of the pixel range. Our images are in
  [0, 1] less their mean, so the same share of the range is ε = 1.75 · √(D / 3072) for D
  input values: 1.53 for the MNIST network's 28 × 28 × 3, 1.75 for 32 × 32 × 3.
- The domain-adversarial part stays DANN's, not the paper's (a separately trained
  discriminator with weight 0.01 and Adam at 10⁻³): the comparison this method answers is
  "DANN's protocol, with VADA's regularisers added or not".

Cost: the virtual adversarial terms take two more forward passes and one more backward pass
of the joint batch per step; a step costs about 3.4 of DANN's (measured on the 2-core CPU).

Measured (``benchmarks/results/vada.md``): with these defaults it collapses on MNIST → MNIST-M
(one class takes 41–48 % of the target images, 0.5562 ± 0.0245, flagged by
:mod:`transferkit.checks`) and is the best adapted method on SYN SIGNS → GTSRB (0.3675 ±
0.0062, above DANN on every seed). Read the run's class-share check before trusting it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transferkit.methods.dann import DANN
from transferkit.models.digit_networks import DigitNetwork

SOURCE_WEIGHT = 1.0  # λ_s
TARGET_WEIGHT = 0.01  # λ_t
XI = 1e-6  # the first, small perturbation of the power iteration
REFERENCE_RADIUS = 3.5  # the authors' ε, for 32 × 32 × 3 images in [−1, 1]
REFERENCE_VALUES = 32 * 32 * 3
REFERENCE_RANGE = 2.0


def matched_radius(values_per_image: int, pixel_range: float = 1.0) -> float:
    """ε giving the same root-mean-square perturbation per value, as a share of the pixel
    range, as the authors' 3.5 on 32 × 32 × 3 images in [−1, 1]."""
    if values_per_image <= 0 or pixel_range <= 0:
        raise ValueError("values_per_image and pixel_range must be positive")
    per_value = REFERENCE_RADIUS / math.sqrt(REFERENCE_VALUES) / REFERENCE_RANGE
    return per_value * pixel_range * math.sqrt(values_per_image)


def _unit(directions: torch.Tensor) -> torch.Tensor:
    """Each image's perturbation scaled to L2 norm 1."""
    norms = directions.flatten(1).norm(dim=1).clamp_min(1e-12)
    return directions / norms.view(-1, *([1] * (directions.ndim - 1)))


def conditional_entropy(logits: torch.Tensor) -> torch.Tensor:
    """−mean_i Σ_k p_ik log p_ik of a batch of class logits (0 when every row is certain)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def virtual_adversarial_divergence(classifier, images: torch.Tensor, logits: torch.Tensor,
                                   radius: float, xi: float = XI) -> torch.Tensor:
    """KL(p(x) ‖ p(x + r)) of each image (a vector), r the virtual adversarial perturbation
    of norm ``radius`` found by one power iteration; p(x) = softmax(``logits``) is held
    constant. Gradients reach ``classifier``'s weights only through p(x + r)."""
    target = F.softmax(logits.detach(), dim=1)
    log_target = F.log_softmax(logits.detach(), dim=1)
    images = images.detach()
    probe = (xi * _unit(torch.randn_like(images))).requires_grad_(True)
    probe_log_p = F.log_softmax(classifier(images + probe), dim=1)
    divergence = (target * (log_target - probe_log_p)).sum()
    (gradient,) = torch.autograd.grad(divergence, probe)
    perturbation = radius * _unit(gradient.detach())
    adversarial_log_p = F.log_softmax(classifier(images + perturbation), dim=1)
    return (target * (log_target - adversarial_log_p)).sum(dim=1)


class VADA(DANN):
    name = "vada"

    def __init__(self, network: DigitNetwork, domain_loss: str = "mean",
                 source_weight: float = SOURCE_WEIGHT, target_weight: float = TARGET_WEIGHT,
                 radius: float | None = None) -> None:
        super().__init__(network, domain_loss)
        self.source_weight = source_weight
        self.target_weight = target_weight
        values = 3 * network.image_size * network.image_size
        self.radius = matched_radius(values) if radius is None else radius

    def losses(self, images: torch.Tensor, labels: torch.Tensor,
               target_images: torch.Tensor | None, progress: float) -> dict[str, torch.Tensor]:
        values, features = self.adversarial_losses(images, labels, target_images, progress)
        logits = self.network.label_predictor(features)
        sources = len(images)
        entropy = conditional_entropy(logits[sources:])
        joint = torch.cat([images, target_images])
        divergence = virtual_adversarial_divergence(self.network, joint, logits, self.radius)
        source_vat = divergence[:sources].mean()
        target_vat = divergence[sources:].mean()
        values["loss"] = (values["loss"] + self.source_weight * source_vat
                          + self.target_weight * (entropy + target_vat))
        values["target_entropy"] = entropy.detach()
        values["source_vat"] = source_vat.detach()
        values["target_vat"] = target_vat.detach()
        return values
