"""etf-train: learned, fixed simplex-ETF and nearest simplex-ETF classifier heads, and a runner to compare them.

The public names load lazily (PEP 562), so that `etf-compare` and the CLI's start-up checks do not pay for
importing torch.
"""

from importlib import import_module

_PUBLIC = {
    "EtfTrainError": ".errors",
    "FixedETFHead": ".heads",
    "LearnedHead": ".heads",
    "NearestETFHead": ".heads",
    "create_head": ".heads",
    "SolveInfo": ".solver",
    "nearest_etf": ".solver",
    "canonical_stiefel": ".etf",
    "centring_matrix": ".etf",
    "random_stiefel": ".etf",
    "simplex_etf": ".etf",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'etf_train' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
