"""The `etf-train` command: Hydra composes configs/, then trainer.train runs the experiment.

Bad input ends with one line on stderr, `etf-train: error: ...`, and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def config_dir() -> Path:
    """configs/ beside the package in a source checkout, or inside it in an installed wheel."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from .errors import EtfTrainError
    from .trainer import train

    try:
        train(cfg, HydraConfig.get().runtime.output_dir)
    except EtfTrainError as e:
        print(f"etf-train: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
