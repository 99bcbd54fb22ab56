"""Does VADA's virtual-adversarial probe survive float32 rounding? (issue 20, part 1)

For real batches of a domain pair (64 source + 64 target images, normalized as training does)
and a network either at its initialization or after a few hundred source-only SGD steps, this
prints, for each probe size ξ:

- the share of input values that ``images + ξ·unit(d)`` changes in float32;
- the cosine, per image, between the float32 power-iteration direction and a float64
  reference (the same network, images and start direction d in float64, ξ = 1e-6: there the
  probe is 10⁸ times float64's spacing and the finite difference is exact to many digits);
- the same for the exact Hessian-vector product VADA now uses (``exact``: float32; ``exact64``:
  float64, which checks the formula against the independent finite difference).

    python benchmarks/experiments/vat_probe.py           # MNIST → MNIST-M and SYN SIGNS → GTSRB
    python benchmarks/experiments/vat_probe.py --pairs mnist:mnist_m --steps 0
"""

from __future__ import annotations

import argparse
import copy

import torch

from transferkit.api import default_geometry
from transferkit.benchmarks.protocols import GANIN2016
from transferkit.data.pairs import load_pair
from transferkit.methods.vada import adversarial_direction, matched_radius, probe_share_changed
from transferkit.models.digit_networks import DigitNetwork

XIS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def source_only_steps(network: DigitNetwork, pair, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    images, labels = pair.source_train.images, pair.source_train.labels
    for _ in range(steps):
        chosen = torch.randint(len(images), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(network(pair.normalize(images[chosen])), labels[chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def divergence_at(network, images, logits, radius, direction) -> torch.Tensor:
    """KL(p(x) ‖ p(x + ε·direction)) per image: what a direction does at VADA's radius."""
    p = torch.softmax(logits, 1)
    moved = torch.log_softmax(network(images + radius * direction.float()), 1)
    return (p * (torch.log(p.clamp_min(1e-30)) - moved)).sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="mnist:mnist_m,syn_signs:gtsrb")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 300],
                        help="source-only SGD steps before measuring (one row block each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for key in args.pairs.split(","):
        source, target = key.split(":")
        protocol = next(p for p in GANIN2016.pairs if p.key == key)
        spec = {"network": protocol.network, "size": protocol.image_size,
                "binarize": protocol.binarize_source, "geometry": default_geometry(source, target)}
        pair = load_pair(source, target, size=spec["size"], binarize_source=spec["binarize"],
                         geometry=spec["geometry"])
        generator = torch.Generator().manual_seed(args.seed)
        chosen_s = torch.randint(len(pair.source_train.images), (64,), generator=generator)
        chosen_t = torch.randint(len(pair.target_train.images), (64,), generator=generator)
        images = torch.cat([pair.normalize(pair.source_train.images[chosen_s]),
                            pair.normalize(pair.target_train.images[chosen_t])])
        start = torch.randn(images.shape, generator=generator, dtype=torch.float64)
        radius = matched_radius(images[0].numel())
        print(f"\n{source} → {target}: {spec['network']} network at {spec['size']} px, "
              f"inputs in [{float(images.min()):.2f}, {float(images.max()):.2f}], "
              f"{images[0].numel()} values an image, ε = {radius:.2f}")
        torch.manual_seed(args.seed)
        network = DigitNetwork(spec["network"], len(pair.classes), spec["size"])
        done = 0
        for steps in sorted(args.steps):
            source_only_steps(network, pair, steps - done, args.seed)
            done = steps
            network.eval()
            reference_net = copy.deepcopy(network).double()
            images64 = images.double()
            with torch.no_grad():
                logits64 = reference_net(images64)
                logits32 = network(images)
            reference = adversarial_direction(reference_net, images64, logits64, 1e-6, start)
            exact64 = adversarial_direction(reference_net, images64, logits64, None, start)
            print(f"after {steps} source-only steps: cosine per image with the float64 finite "
                  f"difference at ξ = 1e-6 (FD64) and with the float64 exact product (exact64); "
                  f"S source, T target images (64 each)")
            print(f"  {'float32':>8} {'changed':>8} {'FD64 S mean':>12} {'min':>7} {'FD64 T mean':>12} "
                  f"{'min':>7} {'exact64 mean':>13} {'min':>7}")
            rows = [(f"ξ {xi:.0e}", probe_share_changed(images, xi, start.float()),
                     adversarial_direction(network, images, logits32, xi, start.float()))
                    for xi in XIS]
            rows.append(("exact", float("nan"),
                         adversarial_direction(network, images, logits32, None, start.float())))
            unit = torch.randn(images.shape, generator=generator)
            unit = unit / unit.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            kl = {"random": divergence_at(network, images, logits32, radius, unit)}
            kl.update({name: divergence_at(network, images, logits32, radius, direction)
                       for name, _, direction in rows if name in ("ξ 1e-06", "exact")})
            print("  KL(p(x) ‖ p(x + εd)) at ε = {:.2f}, mean over the 128 images: {}".format(
                radius, ", ".join(f"{name} {float(v.mean()):.4f}" for name, v in kl.items())))
            for name, share, direction in rows:
                fd = (direction.double() * reference).flatten(1).sum(1)
                ex = (direction.double() * exact64).flatten(1).sum(1)
                print(f"  {name:>8} {share:8.4f} {float(fd[:64].mean()):12.4f} {float(fd[:64].min()):7.4f} "
                      f"{float(fd[64:].mean()):12.4f} {float(fd[64:].min()):7.4f} "
                      f"{float(ex.mean()):13.6f} {float(ex.min()):7.4f}")
            network.train()


if __name__ == "__main__":
    main()
