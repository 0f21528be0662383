"""etf-train: learned, fixed simplex-ETF and nearest simplex-ETF classifier heads, and a runner to compare them."""

from .errors import EtfTrainError
from .etf import canonical_stiefel, centring_matrix, random_stiefel, simplex_etf
from .solver import SolveInfo, nearest_etf

__all__ = [
    "EtfTrainError",
    "SolveInfo",
    "canonical_stiefel",
    "centring_matrix",
    "nearest_etf",
    "random_stiefel",
    "simplex_etf",
]
