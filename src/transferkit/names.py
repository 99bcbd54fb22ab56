"""Names the command line offers, kept free of torch so that ``--help`` and the data
commands start quickly. The registries they name live in ``methods`` and ``models``."""

METHOD_NAMES = ("source_only", "sa", "dann", "target_only", "dann_mcc", "cdan", "vada", "dann_fixmatch")
NETWORK_NAMES = ("mnist", "svhn", "gtsrb")
# label-free validators that can choose a run's epoch (transferkit.validators), besides "last"
SELECTOR_NAMES = ("class_shares", "im", "entropy", "snd", "source_accuracy")
GEOMETRIES = ("resize", "center")  # how images of another size reach the common size
