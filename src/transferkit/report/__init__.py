"""``transferkit report RUN_DIR``: one self-contained HTML page about a run, plus its PNGs.

:mod:`pages` assembles the page of each kind of run, :mod:`figures` draws its PNGs, and
:mod:`features` loads a run's network and computes the features and predictions they show.
"""

from transferkit.report.features import adapt_network, features_and_predictions
from transferkit.report.pages import report

__all__ = ["adapt_network", "features_and_predictions", "report"]
