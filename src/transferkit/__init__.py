"""transferkit: transfer learning for practitioners.

Feature extraction and fine-tuning from pretrained backbones, and unsupervised domain
adaptation (DANN, Subspace Alignment, ...) on a shared, offline-first data layer.
"""

from transferkit.errors import DataError, DataMissingError, TransferkitError

__version__ = "0.1.0"
__all__ = ["DataError", "DataMissingError", "DomainAdapter", "TransferkitError", "__version__"]


def __getattr__(name: str):
    if name == "DomainAdapter":  # imported on use: the data CLI should not pay for torch
        from transferkit.api import DomainAdapter

        return DomainAdapter
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
