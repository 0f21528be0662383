"""Classifier heads: learned, fixed simplex ETF, nearest simplex ETF. Plain nn.Modules, no Hydra; one module each
(base.py holds what every head shares and the registry). A new head is one module here plus one configs/head/ yaml.

Every head maps backbone features f (B, d) to logits (B, K) through the same normalisation
h = tau f / ||f|| (switchable off): forward(f, y) = classify(normalize(f), y).
"""

from .base import HEADS, Head, create_head, heads_with, register_head
from .fixed_etf import FixedETFHead
from .learned import LearnedHead
from .nearest_etf import NearestETFHead

__all__ = [
    "HEADS",
    "FixedETFHead",
    "Head",
    "LearnedHead",
    "NearestETFHead",
    "create_head",
    "heads_with",
    "register_head",
]
