"""Training: the loop (loop.py), the model (model.py), what a run is built from (factories.py), checkpoints and stop
signals (checkpoint.py), torchrun setup (distributed.py) and the evaluation passes (evaluate.py)."""

from .checkpoint import SignalGuard, load_checkpoint, save_checkpoint
from .factories import build_model, build_optimizer, build_scheduler
from .loop import Run, train
from .model import Classifier

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
