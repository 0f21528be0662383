"""Metrics over a data split, streaming and all-reduce aware: neural collapse (nc.py) and classification
(classification.py: top-5, per-class and long-tail group accuracy, calibration, the reliability diagram)."""

from .classification import ClassificationAccumulator, reliability_diagram
from .nc import METRIC_KEYS, NCAccumulator, nc_metrics

__all__ = ["METRIC_KEYS", "ClassificationAccumulator", "NCAccumulator", "nc_metrics", "reliability_diagram"]
