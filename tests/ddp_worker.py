"""Run by the distributed tests under torchrun: train, then save this rank's final model state.

usage: torchrun --standalone --nproc_per_node=N tests/ddp_worker.py OUT_DIR OVERRIDE...
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir

from etf_train.cli import config_dir
from etf_train.training import Run

if __name__ == "__main__":
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    run = Run(cfg, out / "run")
    last = run.fit()
    torch.save({"scalars": last, "model": run.model.state_dict()}, out / f"rank{run.world.rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)
