"""The networks of Ganin et al. 2016 (JMLR), §5.2.2 and Figure 4, one per benchmark family.

Each is three parts: a feature extractor (convolutions), a label predictor and a domain
classifier (fully connected). Layer sizes follow the paper's figure:

- ``mnist``  (28×28): conv5×5-32, pool2 · conv5×5-48, pool2 | fc100, fc100, fc10 | fc100, fc1
- ``svhn``   (32×32): conv5×5-64, pool3/2 · conv5×5-64, pool3/2 · conv5×5-128 |
  fc3072, fc2048, fc10 | fc1024, fc1024, fc1
- ``gtsrb``  (40×40): conv5×5-96, pool2 · conv3×3-144, pool2 · conv5×5-256, pool2 |
  fc512, fc43 | fc1024, fc1024, fc1

Choices the figure leaves open, and what we took: ReLU after every hidden layer (the paper's
text), max-pooling, no padding for the MNIST net (its 28×28 input then gives 48×4×4 features,
the size the figure implies), padding 2 in the SVHN and GTSRB nets so that 32×32 and 40×40
inputs keep a spatial map through three stages; no batch normalization or dropout (not in the
paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from transferkit.errors import TransferkitError


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    input_size: int
    build_features: object  # () -> nn.Module
    label_hidden: tuple[int, ...]
    domain_hidden: tuple[int, ...]


def _mnist_features() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        nn.Conv2d(32, 48, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        nn.Flatten(),
    )


def _svhn_features() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2), nn.MaxPool2d(3, 2), nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 5, padding=2), nn.MaxPool2d(3, 2), nn.ReLU(inplace=True),
        nn.Conv2d(64, 128, 5, padding=2), nn.ReLU(inplace=True),
        nn.Flatten(),
    )


def _gtsrb_features() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 96, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        nn.Conv2d(96, 144, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        nn.Conv2d(144, 256, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        nn.Flatten(),
    )


NETWORKS: dict[str, NetworkSpec] = {
    "mnist": NetworkSpec("mnist", 28, _mnist_features, (100, 100), (100,)),
    "svhn": NetworkSpec("svhn", 32, _svhn_features, (3072, 2048), (1024, 1024)),
    "gtsrb": NetworkSpec("gtsrb", 40, _gtsrb_features, (512,), (1024, 1024)),
}


class ImageSizeError(TransferkitError, ValueError):
    """An image size a network cannot take: too small for its convolutions and poolings."""


@cache
def minimum_image_size(name: str) -> int:
    """The smallest side of a square image that network ``name``'s feature extractor maps to
    at least one value per channel (mnist 16, svhn 7, gtsrb 8): found by running it, without
    drawing from torch's random number generator."""
    spec = NETWORKS[name]
    with torch.random.fork_rng(devices=[]):  # building initializes weights: keep the seeded stream
        features = spec.build_features()
    with torch.no_grad():
        for side in range(1, spec.input_size + 1):
            try:
                if features(torch.zeros(1, 3, side, side)).shape[1] > 0:
                    return side
            except RuntimeError:  # a kernel larger than its input, or a pooling output of size 0
                continue
    return spec.input_size


def mlp(in_features: int, hidden: tuple[int, ...], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


INITIALIZATIONS = ("he", "pytorch")


def initialize(network: nn.Module, scheme: str = "he") -> None:
    """Set the weights of every convolution and linear layer of ``network``.

    ``he``: He et al. 2015 normal initialization (std √(2 / fan-in), the variance-preserving
    choice for ReLU layers) with biases 0.1, so that every ReLU starts active. PyTorch's
    default (``pytorch``: uniform, std √(1 / (3 · fan-in)), biases near 0) shrinks the signal
    by about √6 per layer: the GTSRB network then barely moves in its first hundreds of SGD
    steps, and a DANN run whose reversed gradient pushes pre-activations below zero can lose
    every unit of a layer at once (a seed of ours did: class loss stuck at ln 10 from its
    third epoch on). Positive biases are how the public TensorFlow reimplementations of the
    paper's networks start (constant 0.1).
    """
    if scheme not in INITIALIZATIONS:
        raise ValueError(f"unknown initialization {scheme!r}: expected one of "
                         f"{', '.join(INITIALIZATIONS)}")
    if scheme == "pytorch":
        return
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.constant_(module.bias, 0.1)


INPUT_NORMS = ("instance",)  # besides None: the pair's per-channel mean subtracted, as the paper
INSTANCE_NORM_EPS = 1e-3  # the DIRT-T code's (tensorbayes instance_norm)


class DigitNetwork(nn.Module):
    """Feature extractor + label predictor + domain classifier of one of :data:`NETWORKS`.

    ``input_norm="instance"`` puts instance normalization in front of the feature extractor:
    each image's channels are brought to mean 0 and variance 1 over its pixels, then scaled and
    shifted by learnt per-channel factors (``nn.InstanceNorm2d(3, affine=True)``, ε = 10⁻³), as
    Shu et al. 2018's digit networks do (the DIRT-T code's ``--inorm``). The network then sees
    the same input whatever an image's brightness and contrast per channel, a shift between
    domains it no longer has to learn to ignore. Not in Ganin et al.'s networks."""

    def __init__(self, name: str, num_classes: int, image_size: int | None = None,
                 init: str = "he", input_norm: str | None = None) -> None:
        super().__init__()
        if name not in NETWORKS:
            raise ValueError(f"unknown network {name!r}: expected one of {', '.join(NETWORKS)}")
        if input_norm is not None and input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input normalization {input_norm!r}: expected one of "
                             f"{', '.join(INPUT_NORMS)} (or none)")
        spec = NETWORKS[name]
        self.spec = spec
        self.image_size = spec.input_size if image_size is None else int(image_size)
        minimum = minimum_image_size(name)
        if self.image_size < minimum:
            raise ImageSizeError(
                f"image size {self.image_size} is too small for the {name} network: it takes "
                f"images of at least {minimum}×{minimum} pixels (the paper's are "
                f"{spec.input_size}×{spec.input_size})")
        self.input_norm = input_norm
        self.features = spec.build_features()
        if input_norm == "instance":  # its parameters start at 1 and 0: initialize() leaves them
            self.features = nn.Sequential(
                nn.InstanceNorm2d(3, affine=True, eps=INSTANCE_NORM_EPS), *self.features)
        with torch.no_grad():
            width = self.features(torch.zeros(1, 3, self.image_size, self.image_size)).shape[1]
        self.feature_dim = width
        self.label_predictor = mlp(width, spec.label_hidden, num_classes)
        self.domain_classifier = mlp(width, spec.domain_hidden, 1)
        initialize(self, init)

    @property
    def domain_hidden(self) -> tuple[int, ...]:
        """The hidden widths of the paper's domain classifier for this network."""
        return self.spec.domain_hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.label_predictor(self.features(images))

    def hidden(self, images: torch.Tensor) -> torch.Tensor:
        """The label predictor's last hidden layer (after its ReLU), before the final linear
        classifier: the descriptors the DANN paper aligns for its SA baseline (§5.2.1)."""
        return self.label_predictor[:-1](self.features(images))
