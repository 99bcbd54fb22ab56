"""Reusing ImageNet-trained networks: feature extraction, fine-tuning, and the scratch baseline.

- :mod:`benchmark` — Chollet's cats-vs-dogs protocol and the data-efficiency curve.
"""
