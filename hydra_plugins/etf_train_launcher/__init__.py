"""etf-train's Hydra launcher: hydra/launcher=parallel (configs/hydra/launcher/parallel.yaml)."""
