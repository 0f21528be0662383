"""Training: the loop (loop.py), what a run is built from (factories.py), checkpoints and stop signals
(checkpoint.py), torchrun setup (distributed.py) and the evaluation passes (evaluate.py)."""

from .checkpoint import SignalGuard, load_checkpoint, save_checkpoint
from .factories import Classifier, build_model, build_optimizer, build_scheduler
from .loop import Run, train

__all__ = [
    "Classifier",
    "Run",
    "SignalGuard",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
