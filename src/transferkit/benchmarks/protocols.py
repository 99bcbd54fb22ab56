"""Benchmark protocols: which pairs, networks and budgets, and the published numbers.

Adding a pair is adding a :class:`PairProtocol` here, not code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class PairProtocol:
    source: str
    target: str
    network: str
    image_size: int
    epochs: int  # passes over the labelled split (for SYN SIGNS: fixed steps, see below)
    paper: dict[str, float]  # method → published target-test accuracy
    steps_per_epoch: int | None = None
    binarize_source: bool = False
    geometry: str | None = None  # None: the adapter's default for the pair (api.PAIR_GEOMETRIES)
    ema_decay: float | None = None  # the model is an EMA of the weights (None: last weights)
    note: str = ""
    backbone: str | None = None  # a pretrained backbone in place of the paper's ``network``
    unfreeze: int | str = "all"  # the backbone's trained stages (the others stay frozen)
    input_norm: str | None = None  # "instance": the digit network normalizes each image first

    @property
    def key(self) -> str:
        return f"{self.source}:{self.target}"


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    pairs: tuple[PairProtocol, ...]
    methods: tuple[str, ...] = ("source_only", "sa", "dann", "target_only", "dann_mcc",
                                 "cdan", "vada", "dann_fixmatch")
    method_titles: dict[str, str] = field(default_factory=dict)


GANIN2016 = Protocol(
    name="ganin2016",
    title="Ganin et al., Domain-Adversarial Training of Neural Networks, JMLR 17(59) 2016, "
          "Table 2 (target-test accuracy)",
    pairs=(
        PairProtocol("mnist", "mnist_m", "mnist", 28, 20,
                     {"source_only": .5225, "sa": .5690, "dann": .7666, "target_only": .9596},
                     binarize_source=True, ema_decay=0.999,
                     note="MNIST is binarized (pixel > 0 → 255) as MNIST-M's digits were when "
                          "it was drawn; MNIST-M's 32×32 images are MNIST digits with a 2-pixel "
                          "border, which is cropped (not resized) to the network's 28×28"),
        PairProtocol("syn_digits", "svhn", "svhn", 32, 10,
                     {"source_only": .8674, "sa": .8644, "dann": .9109, "target_only": .9220}),
        PairProtocol("svhn", "mnist", "svhn", 32, 10,
                     {"source_only": .5490, "sa": .5932, "dann": .7385, "target_only": .9942}),
        PairProtocol("syn_signs", "gtsrb", "gtsrb", 32, 10,
                     {"source_only": .7900, "sa": .8165, "dann": .8865, "target_only": .9980},
                     steps_per_epoch=50,
                     note="the offline mirror's SYN SIGNS holds 1,982 images (the paper's "
                          "source set had 100,000); inputs are 32×32, the mirror's GTSRB size "
                          "(the paper used 40×40), and the budget is 500 steps, sized for a "
                          "2-core CPU"),
    ),
    method_titles={"source_only": "Source only", "sa": "SA (Fernando et al. 2013)",
                   "dann": "DANN", "target_only": "Train on target (oracle)",
                   "dann_mcc": "DANN + MCC (Jin et al. 2020; not in the paper)",
                   "cdan": "CDAN+E (Long et al. 2018; not in the paper)",
                   "vada": "VADA on DANN's protocol (Shu et al. 2018; not in the paper)",
                   "dann_fixmatch": "DANN + FixMatch/AdaMatch self-training (2020-22; not in "
                                    "the paper)"},
)

# The same pairs on an ImageNet-pretrained EfficientNet-Lite0 (last stage and head trained, the
# frozen stages' activations cached once per image) in place of the paper's digit networks.
# 64 px inputs, both domains resized (Lite0's 224 px would cost 12× the multiply-adds on a CPU);
# MNIST → MNIST-M gets a quarter of the digit network's epochs (4,600 steps), a budget sized
# for a 2-core CPU.
_LITE0_PAIRS = {"mnist:mnist_m": {"epochs": 5, "geometry": "resize",
                                  "note": "Lite0 rows: MNIST and MNIST-M are both resized to "
                                          "64 px, so MNIST-M's 2-pixel border stays in its "
                                          "images; 5 epochs"},
                "syn_signs:gtsrb": {"note": "Lite0 rows: 64 px inputs, the same 500 steps as "
                                            "the digit network"}}
GANIN2016_LITE0 = Protocol(
    name="ganin2016_lite0",
    title="Ganin et al. 2016's pairs on an ImageNet-pretrained EfficientNet-Lite0 (last stage, "
          "bottleneck and head trained), beside the paper's numbers for its digit networks",
    pairs=tuple(replace(pair, backbone="efficientnet_lite0", unfreeze=1, image_size=64,
                        **_LITE0_PAIRS[pair.key])
                for pair in GANIN2016.pairs if pair.key in _LITE0_PAIRS),
    methods=("source_only", "dann", "cdan"),
    method_titles=GANIN2016.method_titles,
)

PROTOCOLS = {p.name: p for p in (GANIN2016, GANIN2016_LITE0)}
