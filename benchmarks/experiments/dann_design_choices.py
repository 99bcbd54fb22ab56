"""The DANN design choices on MNIST → MNIST-M, one run per call (seed 0, 10 epochs, CPU).

    python benchmarks/experiments/dann_design_choices.py NAME [init=he|pytorch|tf] [loss=mean|sum]
        [geometry=center|resize] [norm=joint|per_domain] [dc=paper|big] [seed=0] [epochs=10]

Prints one JSON line (and writes NAME.json to --out, default the current folder): last-epoch
source-validation accuracy per epoch, domain-classifier accuracy per epoch, accuracy on the
target *training* images and the target-test accuracy. This is the exploration behind the
defaults of ``transferkit adapt`` for this pair; it reads target labels, so the choices it
informed are disclosed as such in ``benchmarks/results/ganin2016.md``.

- ``init=tf``: truncated normal σ = 0.1, biases 0.1 (the public TensorFlow reimplementations);
- ``norm=per_domain``: each domain's own per-channel pixel mean subtracted (label-free);
- ``dc=big``: the 1024-1024 domain classifier the paper used for its other networks.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from transferkit.data.pairs import DomainPair, load_pair
from transferkit.methods import DANN
from transferkit.models import DigitNetwork
from transferkit.models.digit_networks import initialize, mlp
from transferkit.training.loop import TrainConfig, evaluate, fit, run_batches


def per_domain_pair(pair: DomainPair) -> DomainPair:
    """The pair with each domain's own mean subtracted (binarized source: only 0 and 255)."""
    def mean_of(images: torch.Tensor) -> torch.Tensor:
        return (images.double().mean((0, 2, 3)) / 255).float()

    source_mean, target_mean = mean_of(pair.source_train.images), mean_of(pair.target_train.images)

    class PerDomain(DomainPair):
        def normalize(self, images: torch.Tensor) -> torch.Tensor:
            is_source = bool(((images == 0) | (images == 255)).all())
            mean = source_mean if is_source else target_mean
            return images.float().div_(255.0).sub_(mean.view(1, -1, 1, 1))

    return PerDomain(**{f.name: getattr(pair, f.name) for f in dataclasses.fields(pair)})


def main() -> None:
    name = sys.argv[1]
    opts = dict(a.split("=", 1) for a in sys.argv[2:])
    out = Path(opts.pop("out", "."))
    seed, epochs = int(opts.get("seed", 0)), int(opts.get("epochs", 10))
    init = opts.get("init", "he")
    pair = load_pair("mnist", "mnist_m", size=28, binarize_source=True,
                     geometry=opts.get("geometry", "center"))
    if opts.get("norm", "joint") == "per_domain":
        pair = per_domain_pair(pair)
    torch.manual_seed(seed)
    network = DigitNetwork("mnist", 10, 28, init="pytorch" if init == "tf" else init)
    if opts.get("dc", "paper") == "big":
        network.domain_classifier = mlp(network.feature_dim, (1024, 1024), 1)
        initialize(network.domain_classifier, "pytorch" if init == "tf" else init)
    if init == "tf":
        for module in network.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.1, a=-0.2, b=0.2)
                nn.init.constant_(module.bias, 0.1)
    method = DANN(network, domain_loss=opts.get("loss", "mean"))
    started = time.time()
    history = fit(method, pair, TrainConfig(epochs=epochs, seed=seed, device="cpu"), None,
                  progress=False)
    predictions = run_batches(method, pair.target_train.images, pair).argmax(1)
    result = {
        "name": name, "opts": opts, "wall": time.time() - started,
        "ips": sum(h["images_per_second"] for h in history) / len(history),
        "source_val": [round(h["source_val_accuracy"], 4) for h in history],
        "dom_acc": [round(h["domain_accuracy"], 3) for h in history],
        "target_train_acc": float((predictions == pair.target_train.labels).float().mean()),
        "target_test_acc": evaluate(method, pair.target_test, pair),
    }
    print(json.dumps(result))
    (out / f"{name}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
