"""What a run is built from: the model (backbone -> head), the optimiser and the learning-rate schedule.

Config groups served here: backbone/ and head/ (through their registries), optimizer/ and scheduler/ (built by
hydra.utils.instantiate from their `_target_`, with `_partial_` since the parameters and the optimiser come later).
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import nullcontext

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .. import options as opt
from ..backbones import create_backbone
from ..errors import EtfTrainError
from ..heads import HEADS, create_head
from .model import Classifier


def check_config(cfg: DictConfig) -> None:
    t = cfg.trainer
    for key in ("max_epochs", "batch_size", "eval_batch_size"):
        opt.integer(f"trainer.{key}", t[key])
    opt.integer("trainer.save_every_n_epochs", t.save_every_n_epochs, 0)
    opt.number("trainer.checkpoint_every_s", t.checkpoint_every_s, 0)
    opt.integer("metrics.every_n_epochs", cfg.metrics.every_n_epochs)
    opt.boolean("metrics.erank_sw", cfg.metrics.erank_sw)
    opt.integer("seed", cfg.seed, 0)
    opt.choice("trainer.precision", t.precision, ("auto", "bf16", "fp32"))
    opt.choice("trainer.nonfinite", t.nonfinite, ("stop", "skip"))
    late = [m for m in cfg.scheduler.get("milestones") or () if m >= t.max_epochs]
    if late:  # scheduler=step's [100, 150] in a 10-epoch run: a constant rate recorded as a step schedule
        raise EtfTrainError(
            f"scheduler.milestones {list(cfg.scheduler.milestones)}: {late} lie at or past "
            f"trainer.max_epochs={t.max_epochs}, where the rate never drops; give milestones within the run"
        )


def check_world(cfg: DictConfig, world_size: int) -> None:
    """Refuse what would differ under torchrun from the same run in one process, silently."""
    if world_size == 1:
        return
    if cfg.trainer.nonfinite == "skip":  # each process would skip alone: unmatched all-reduces
        raise EtfTrainError(
            "trainer.nonfinite=skip is not supported under torchrun: a process that skips a step would "
            "leave the others waiting in the gradient all-reduce; use trainer.nonfinite=stop"
        )
    if cfg.head.get("center") == "batch":
        raise EtfTrainError(
            "head.center=batch centres by each process's share of a batch (and of the evaluation "
            "batches), so it would not be the run one process makes: run it without torchrun"
        )
    if cfg.trainer.batch_size % world_size:
        raise EtfTrainError(
            f"trainer.batch_size={cfg.trainer.batch_size} (the global batch) must divide evenly over "
            f"{world_size} processes"
        )


def warn_small_leftover(cfg: DictConfig, num_train: int, num_classes: int) -> None:
    """One line when each epoch ends in a batch too small to hold every class (N mod batch_size of a few samples):
    nearest_etf centres a batch by its own mean, so on such a batch its logits nearly cancel and its running class
    means are pulled by a handful of samples, which the other heads do not suffer. The authors' stratified batches
    spread the remainder instead."""
    left = num_train % cfg.trainer.batch_size  # a single sample joins the batch before (data/samplers.py)
    if HEADS.get(cfg.head.name).batch_centred and 1 < left < min(num_classes, cfg.trainer.batch_size / 4):
        logging.getLogger("etf_train").warning(
            "each epoch ends in a batch of %d sample(s) (%d train samples, trainer.batch_size=%d): head %s centres a "
            "batch by its own mean, so that step is nearly degenerate; a batch size that divides the train set, or "
            "leaves more over, avoids it",
            left,
            num_train,
            cfg.trainer.batch_size,
            cfg.head.name,
        )


def resolve_precision(setting: str, device: torch.device) -> str:
    """trainer.precision as it runs: auto is bf16 autocast on CUDA and fp32 elsewhere."""
    return "bf16" if setting == "bf16" or (setting == "auto" and device.type == "cuda") else "fp32"


def build_autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def _options(node: DictConfig, *drop: str) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in drop}


def build_model(cfg: DictConfig, num_classes: int, in_shape, num_samples: int) -> Classifier:
    backbone = create_backbone(
        cfg.backbone.name, in_shape=in_shape, num_samples=num_samples, **_options(cfg.backbone, "name")
    )
    # the head's own draws (a learned classifier's init) must not move the global stream: whatever draws from it
    # next (AGD's re-initialisation of every weight, dropout) then draws the same numbers for every head of a seed
    with torch.random.fork_rng(devices=[]):
        head = create_head(cfg.head.name, num_classes, backbone.feature_dim, **_options(cfg.head, "name"))
    return Classifier(backbone, head)


def component_name(node: DictConfig) -> str:
    """`sgd` for `_target_: torch.optim.SGD`: how reports name an optimiser or schedule."""
    target = node.get("_target_") if node is not None else None
    return "none" if target is None else str(target).rsplit(".", 1)[-1].lower()


def _instantiate(group: str, node: DictConfig, *args):
    try:
        return instantiate(node, _convert_="all")(*args)
    except EtfTrainError:  # already worded for the user (e.g. AGD refusing 1-D parameters)
        raise
    except (InstantiationException, TypeError, ValueError) as e:
        cause = e.__cause__ or e
        raise EtfTrainError(
            f"{group}={component_name(node)} refused its options: {str(cause).splitlines()[0]}"
        ) from None


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """optimizer/: any torch optimiser class as `_target_` (sgd, adamw) or ours (agd), over the model's parameters;
    a class with `takes_named_parameters` gets (name, parameter) pairs (AGD names the parameters it refuses)."""
    if "lr" in cfg:  # agd has a gain instead
        opt.number("optimizer.lr", cfg.lr, above=0)
    try:
        cls = get_class(cfg._target_)
    except (ImportError, ValueError, AttributeError) as e:
        raise EtfTrainError(f"optimizer._target_={cfg._target_!r} is not a class: {e}") from None
    device = next(model.parameters()).device
    if cfg.get("fused") and not _fused_available(cls, device):
        cfg = OmegaConf.merge(cfg, {"fused": None})  # torch < 2.4 on CPU: the default (foreach) implementation
    named = getattr(cls, "takes_named_parameters", False)
    return _instantiate("optimizer", cfg, model.named_parameters() if named else model.parameters())


def step_size_option(cfg: DictConfig) -> str:
    """The option that sets the optimiser's step size, for advice such as "lower it": AGD has a gain, not a rate."""
    return "optimizer.gain" if "gain" in cfg else "optimizer.lr"


def optimizer_record(optimizer) -> dict:
    """What the run's record adds under `optimizer` for this optimiser (AGD: the depth it resolved for the model)."""
    return getattr(optimizer, "record", dict)()


def optimizer_scalars(optimizer) -> dict[str, float]:
    """The optimiser's own scalars since the last call (AGD: its mean step size), for the epoch's log."""
    return getattr(optimizer, "epoch_scalars", dict)()


def _fused_available(cls, device: torch.device) -> bool:
    """Whether this torch has a fused `cls` step for parameters on `device` (CPU since torch 2.4)."""
    try:
        cls([torch.zeros(1, device=device, requires_grad=True)], lr=0.1, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def build_scheduler(cfg: DictConfig, optimizer):
    """scheduler/: a torch LR scheduler as `_target_` (cosine, step), stepped once per epoch; none: no schedule."""
    if cfg.get("_target_") is None:
        return None
    return _instantiate("scheduler", cfg, optimizer)


def set_cuda_math(cudnn_benchmark: bool | None, tf32: bool | None, deterministic: bool) -> None:
    """trainer.cudnn_benchmark and trainer.tf32 (null: torch's defaults, untouched). Process-wide flags, which matter
    on CUDA only."""
    if cudnn_benchmark is not None:
        if opt.boolean("trainer.cudnn_benchmark", cudnn_benchmark) and deterministic:
            raise EtfTrainError(
                "trainer.cudnn_benchmark=true picks convolution algorithms by timing them, which "
                "trainer.deterministic=true rules out: drop one of the two"
            )
        torch.backends.cudnn.benchmark = cudnn_benchmark
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = opt.boolean("trainer.tf32", tf32)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # in time only for the process's first cuBLAS call; etf-train's CLI sets it at start (cli.set_process_env)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
