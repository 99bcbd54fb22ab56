"""transferkit: transfer learning for practitioners.

Feature extraction and fine-tuning from pretrained backbones, and unsupervised domain
adaptation (DANN, Subspace Alignment, ...) on a shared, offline-first data layer.
"""

from transferkit.errors import DataError, DataMissingError, TransferkitError

__version__ = "0.1.0"
__all__ = ["DataError", "DataMissingError", "TransferkitError", "__version__"]
