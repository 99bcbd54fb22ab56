"""One DANN step of the MNIST network, eager versus ``torch.compile``, source+target images/s.

    THREADS=1 python benchmarks/experiments/compile_vs_eager.py

Three measurements of 60 steps each (after 10 warm-up steps, which include compilation).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from step_throughput import images_per_second

from transferkit.models import DigitNetwork, gradient_reversal


def rate(compiled: bool, steps: int = 60) -> float:
    torch.manual_seed(0)
    network = DigitNetwork("mnist", 10, 28).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    source = torch.randint(0, 255, (64, 3, 28, 28), dtype=torch.uint8)
    target = torch.randint(0, 255, (64, 3, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,))
    domains = torch.cat([torch.zeros(64), torch.ones(64)])

    def step(source, target, labels):
        images = torch.cat([source, target]).float().div_(255).sub_(0.4)
        features = network.features(images.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(network.label_predictor(features[:64]), labels)
        logits = network.domain_classifier(gradient_reversal(features, 0.5)).squeeze(1)
        loss = loss + F.binary_cross_entropy_with_logits(logits, domains)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    if compiled:
        step = torch.compile(step)
    return images_per_second(lambda: step(source, target, labels), steps)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    for compiled in (False, True):
        rates = [rate(compiled) for _ in range(3)]
        print(f"{'torch.compile' if compiled else 'eager'}: "
              f"{', '.join(f'{r:.0f}' for r in rates)} images/s")


if __name__ == "__main__":
    main()
