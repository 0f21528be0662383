"""`etf-eval RUN_DIR`: evaluate a run's checkpoint again, and export what post-hoc collapse studies need.

    etf-eval outputs/2026-11-23/10-00-00_nearest_etf_seed1_ab12            # last.pt -> eval.json in the run folder
    etf-eval RUN_DIR --checkpoint RUN_DIR/checkpoints/epoch_050.pt          # a numbered checkpoint
    etf-eval RUN_DIR --export features.npz                                  # features, labels, means, W, b, P

The model is rebuilt from the run's own record (`.hydra/config.yaml`, the resolved config) and evaluated as the
trainer evaluates at a metrics epoch: the same scalars (test/*, nc_test/*, train/eval_acc, nc/*), so for the last
checkpoint they equal what the run logged at its last epoch. Nothing in the run folder changes but eval.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import rundir, tags
from .errors import EtfTrainError
from .options import error_line, output_file, output_folder, writing


def _build(config: dict, device):
    """Data and model of a run, from its resolved config: (bundle, loaders, model)."""
    from omegaconf import OmegaConf

    from .data import build_data, build_loaders
    from .training import build_model

    cfg = OmegaConf.create(config)
    bundle = build_data(cfg.dataset.name, **{k: v for k, v in config["dataset"].items() if k not in ("name", "files")})
    if config["dataset"].get("files", bundle.files) != bundle.files:
        raise EtfTrainError(
            f"the data under dataset.root changed since the run (it trained on {config['dataset']['files']}; "
            f"the folder now holds {bundle.files}): its checkpoints cannot be evaluated on it"
        )
    loaders = build_loaders(
        bundle,
        cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size,
        **config["loader"],
        seed=cfg.seed,
        device=device,
    )
    model = build_model(cfg, bundle.num_classes, bundle.in_shape, len(bundle.train)).to(device)
    return bundle, loaders, model


def evaluate_run(run: Path, checkpoint: Path | None = None, device: str = "cpu"):
    """(scalars, bundle, model, (test loader, eval_train loader)) of a run's checkpoint (default checkpoints/last.pt)."""
    import torch

    from .training.checkpoint import load_checkpoint
    from .training.distributed import Dist
    from .training.evaluate import evaluate, evaluate_train_set
    from .training.factories import build_autocast, resolve_precision

    config = rundir.read_record(run)
    if config is None:
        raise EtfTrainError(f"{run} is not a run folder: it has no {rundir.CONFIG}")
    path = checkpoint or rundir.checkpoint(run)
    if not path.is_file():
        raise EtfTrainError(
            f"no checkpoint {path}"
            if checkpoint
            else f"no checkpoint {path}: the run has not saved one yet (or give --checkpoint PATH)"
        )
    device = torch.device(device)
    bundle, (_, test_loader, eval_train_loader), model = _build(config, device)
    meta = {
        "head": config["head"]["name"],
        "num_classes": bundle.num_classes,
        "feature_dim": model.head.dim,
        "backbone": config["backbone"]["name"],
    }
    state = load_checkpoint(path, meta, given=checkpoint is not None)
    if state.get("partial"):  # a stop signal's save: the weights of a step inside the epoch after state["epoch"]
        where = state["partial"]
        raise EtfTrainError(
            f"checkpoint {path} was saved by a stop signal in the middle of epoch {where['epoch']} "
            f"(step {where['step']}): its weights are no logged epoch's; resume the run first, or give "
            "--checkpoint an end-of-epoch checkpoint (checkpoints/epoch_NNN.pt)"
        )
    changes = rundir.changed_settings(state["config"], config)
    if changes:  # another run's weights, which this run's settings (tau, data options, ...) would misreport
        raise EtfTrainError(
            f"checkpoint {path} is of a run with other settings than {run} ({', '.join(changes[:4])}"
            f"{' ...' if len(changes) > 4 else ''}); evaluate it with its own run folder"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise EtfTrainError(
            f"checkpoint {path} does not fit the run's model ({str(e).splitlines()[-1].strip()})"
        ) from None
    # as the run evaluated: in the precision it ran (bf16 on CUDA for `auto`), no test-split NC metrics for UFM
    K, world = bundle.num_classes, Dist()
    autocast = build_autocast(resolve_precision(config["trainer"]["precision"], device), device)
    counts = bundle.shot_counts(config["dataset"].get("imbalance_ratio", 1))
    scalars, _ = evaluate(
        model,
        test_loader,
        device,
        autocast,
        world,
        K,
        nc=bundle.held_out,
        erank_sw=config["metrics"]["erank_sw"],
        class_names=bundle.class_names,
        class_counts=counts,
    )
    scalars |= evaluate_train_set(
        model, eval_train_loader, device, autocast, K, world, bundle.noisy, config["metrics"]["erank_sw"]
    )
    return (
        {"epoch": state["epoch"], "checkpoint": str(path), **scalars},
        bundle,
        model,
        (test_loader, eval_train_loader),
    )


def export(path: Path, model, loaders, device: str = "cpu", about: dict | None = None) -> None:
    """Into one .npz: the features of train and test as the head classifies them (`features_*`: h = tau f / ||f||, or
    f with head.normalize=false) and as the backbone gives them (`raw_features_*`: f), the labels, the train class
    means of h, the classifier W, its bias b and Stiefel point P where the head has them, and `meta`: a JSON string
    naming the head, tau, K, d, what each array is, the run, checkpoint and code version (`about`), and why b or P
    is absent."""
    import numpy as np
    import torch

    model.eval()
    arrays = {}
    with torch.no_grad():
        for split, loader in zip(("test", "train"), loaders):
            raw, feats, labels = [], [], []
            for x, y in loader:
                f = model.backbone(x.to(device)).float()
                raw.append(f.cpu())
                feats.append(model.head.normalize(f).cpu())
                labels.append(y)
            arrays[f"features_{split}"], arrays[f"labels_{split}"] = torch.cat(feats).numpy(), torch.cat(labels).numpy()
            arrays[f"raw_features_{split}"] = torch.cat(raw).numpy()
    h, y = arrays["features_train"], arrays["labels_train"]
    head = model.head
    arrays["class_means"] = np.stack(
        [h[y == c].mean(0) if (y == c).any() else np.full(h.shape[1], np.nan) for c in range(head.num_classes)]
    )
    arrays["W"] = head.weight.detach().float().cpu().numpy()
    absent = {}
    if getattr(head, "center", None) == "batch":
        absent["b"] = "head.center=batch: b = -W mean(h) of each batch at hand, no fixed bias"
    elif head.bias is None:
        absent["b"] = "the head has no bias (head.bias=false)"
    else:
        arrays["b"] = head.bias.detach().float().cpu().numpy()
    if hasattr(head, "P"):
        arrays["P"] = head.P.detach().cpu().numpy()
    else:
        absent["P"] = "only nearest_etf keeps a Stiefel point P; W is the classifier" + (
            " (fixed_etf: W = sqrt(K/(K-1)) M P0^T for its head.basis)" if hasattr(head, "center") else ""
        )
    normalised = getattr(head, "normalize_features", True)
    meta = {
        **(about or {}),
        "num_classes": head.num_classes,
        "feature_dim": head.dim,
        "tau": float(head.tau),
        "features": (
            "h = tau f / ||f||, what the head classifies"
            if normalised
            else "f itself (head.normalize=false), what the head classifies"
        ),
        "raw_features": "f, the backbone's output",
        "class_means": "train class means of features_train",
        "W": "classifier rows (K, d)",
        "absent": absent,
    }
    with writing(path), path.open("wb") as f:  # to the name given: savez given a name would add `.npz` to it
        np.savez(f, **arrays, meta=np.array(json.dumps(meta)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etf-eval",
        description="Evaluate a run's checkpoint again (test and train-set "
        "metrics, written to eval.json) and export features for post-hoc studies.",
    )
    p.add_argument("run", type=Path, help="a run folder (it holds .hydra/config.yaml and checkpoints/)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: RUN/checkpoints/last.pt")
    p.add_argument(
        "--export", type=Path, default=None, metavar="FILE.npz", help="also write features and the classifier"
    )
    p.add_argument("--out", type=Path, default=None, help="where eval.json goes; default: the run folder")
    p.add_argument("--device", default="cpu")
    return p


def _device(spec: str):
    """--device as a torch device this machine has: a name torch does not know, or a device not here, is one line."""
    import torch

    try:
        found = torch.device(spec)
    except RuntimeError:
        raise EtfTrainError(f"--device {spec!r} is not a device; use cpu, cuda or cuda:N") from None
    if found.type not in ("cpu", "cuda"):
        raise EtfTrainError(f"--device {spec}: etf-eval runs on cpu or cuda (cuda:N)")
    if found.type == "cuda" and (found.index or 0) >= (count := torch.cuda.device_count()):
        raise EtfTrainError(
            f"--device {spec}: this machine shows {count} CUDA device{'s' * (count != 1)}; use "
            + ("--device cpu" if count == 0 else f"cuda:0 to cuda:{count - 1} or cpu")
        )
    return found


def _outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """Where eval.json and the export go, tried before the evaluation (minutes on a large run). The default
    folder, the run's own, is never made here: only a folder that exists is tried (a received run may be read-only)."""
    out = args.out if args.out is not None else args.run
    if args.out is not None or out.is_dir():
        output_folder("--out", out, given=args.out is not None)
    return out / "eval.json", None if args.export is None else output_file("--export", args.export)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        where = _device(args.device)
        out, export_to = _outputs(args)
        scalars, _, model, loaders = evaluate_run(args.run, args.checkpoint, where)
        with writing(out):
            out.write_text(json.dumps(scalars, indent=1) + "\n")
        if export_to is not None:
            record = rundir.read_record(args.run)
            about = {
                "run": str(args.run),
                "checkpoint": scalars["checkpoint"],
                "epoch": scalars["epoch"],
                "head": record["head"],
                "code_version": record.get("code_version"),
            }
            export(export_to, model, loaders, where, about)
    except (EtfTrainError, OSError) as e:  # OSError: a path the file system refuses to read (too long, say)
        print(f"etf-eval: error: {error_line(e)}", file=sys.stderr)
        return 2
    keys = (tags.TEST_ACC, tags.TEST_LOSS, tags.EVAL_ACC, tags.NC1, tags.NC3, tags.nc_test("nc1"), tags.TEST_ECE)
    print("  ".join(f"{k}={scalars[k]:.4g}" for k in keys if k in scalars))
    print(f"wrote {out}" + (f" and {export_to}" if export_to else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
