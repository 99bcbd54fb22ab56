"""Train on target: the same network trained on *labelled* target data (the upper reference
of Ganin et al. 2016, Table 2). It uses target labels, so it is an oracle, not adaptation."""

from __future__ import annotations

from transferkit.data.pairs import DomainPair, DomainSplit
from transferkit.methods.source_only import SourceOnly


class TargetOnly(SourceOnly):
    name = "target_only"
    oracle = True

    def labelled_split(self, pair: DomainPair) -> DomainSplit:
        return pair.target_train

    def monitor_split(self, pair: DomainPair) -> DomainSplit | None:
        return None
