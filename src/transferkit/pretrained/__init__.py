"""Reusing ImageNet-trained networks: feature extraction, fine-tuning, and the scratch baseline.

- :mod:`classifier` — backbone + new head, staged training, save/load;
- :mod:`recipes` — ``extract``, ``finetune`` and ``scratch`` runs on a labelled data set;
- :mod:`benchmark` — Chollet's cats-vs-dogs protocol and the data-efficiency curve.
"""
