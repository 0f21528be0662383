"""etf-train: learned, fixed simplex-ETF and nearest simplex-ETF classifier heads, and a runner to compare them."""

from .errors import EtfTrainError
from .etf import canonical_stiefel, centring_matrix, random_stiefel, simplex_etf
from .heads import FixedETFHead, LearnedHead, NearestETFHead, create_head
from .solver import SolveInfo, nearest_etf

__all__ = [
    "EtfTrainError",
    "FixedETFHead",
    "LearnedHead",
    "NearestETFHead",
    "SolveInfo",
    "canonical_stiefel",
    "centring_matrix",
    "create_head",
    "nearest_etf",
    "random_stiefel",
    "simplex_etf",
]
