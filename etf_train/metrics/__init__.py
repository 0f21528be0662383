"""Metrics over a data split, streaming and all-reduce aware: neural collapse (nc.py) and classification
(classification.py: top-5, per-class and long-tail group accuracy, calibration, the reliability diagram).

classification.py loads torchmetrics (about 4 s cold, 1 s after torchvision), so its names load lazily (PEP 562):
code that needs only the NC metrics does not pay for it.
"""

from importlib import import_module

from .nc import METRIC_KEYS, NCAccumulator, nc_metrics

_LAZY = {"ClassificationAccumulator": ".classification", "reliability_diagram": ".classification"}

__all__ = ["METRIC_KEYS", "ClassificationAccumulator", "NCAccumulator", "nc_metrics", "reliability_diagram"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
