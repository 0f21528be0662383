"""How to look at a comparison in TensorBoard: the command, and a URL that opens the comparison view (no smoothing,
one colour per head through a run-name regex, the convergence cards pinned). Printed by etf-train and etf-compare."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

# The cards a comparison of heads looks at first (README, "TensorBoard scalars").
KEY_CARDS = ("test/acc", "train/eval_acc", "nc/nc1", "nc/nc3")
# Run names carry the head: `head=nearest_etf,seed=2` (sweep jobs) or `<time>_nearest_etf_seed2_<id>` (single runs).
HEAD_REGEX = "(learned_authors|fixed_etf_authors|learned|fixed_etf|nearest_etf)"


def tensorboard_url(port: int = 6006) -> str:
    """The time-series view with smoothing 0, runs coloured by head and the key cards pinned."""
    pinned = json.dumps([{"plugin": "scalars", "tag": tag} for tag in KEY_CARDS], separators=(",", ":"))
    query = urlencode({"smoothing": 0, "runColorGroup": f"regex:{HEAD_REGEX}", "pinnedCards": pinned})
    return f"http://localhost:{port}/?{query}#timeseries"


def how_to_look(folder: Path | str) -> str:
    """Two lines: the TensorBoard command for `folder` (the sweep, or the outputs folder of single runs) and the URL."""
    return f"compare: tensorboard --logdir {folder}    then open {tensorboard_url()}"
