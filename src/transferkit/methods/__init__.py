"""Methods, each a small module over the shared training loop, registered by name."""

from transferkit.methods.base import Method
from transferkit.methods.cdan import CDAN
from transferkit.methods.dann import DANN
from transferkit.methods.fixmatch import DANNFixMatch
from transferkit.methods.mcc import DANNMCC
from transferkit.methods.source_only import SourceOnly
from transferkit.methods.subspace_alignment import SubspaceAlignment
from transferkit.methods.target_only import TargetOnly
from transferkit.methods.vada import VADA
from transferkit.names import METHOD_NAMES

# "sa" trains the source-only network, then aligns its features (see api.DomainAdapter).
TRAINED_METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (SourceOnly, TargetOnly, DANN, DANNMCC, CDAN, VADA, DANNFixMatch)
}


def trained_method(name: str) -> type[Method]:
    """The class that trains method ``name``'s network (SA's is the source-only network)."""
    return TRAINED_METHODS["source_only" if name == "sa" else name]


__all__ = ["CDAN", "DANN", "DANNFixMatch", "DANNMCC", "METHOD_NAMES", "TRAINED_METHODS", "Method",
           "SourceOnly", "SubspaceAlignment", "TargetOnly", "VADA", "trained_method"]
