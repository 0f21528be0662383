"""How to look at a comparison in TensorBoard: the command, and a URL that opens the comparison view (no smoothing,
one colour per head through a run-name regex, the convergence cards pinned). Printed by etf-train and etf-compare."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
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


def how_to_look(folders: Path | str | Sequence[Path | str]) -> str:
    """The TensorBoard command for the folder(s) that hold the comparison, and the URL.

    One folder: `--logdir F`. Several (`etf-compare A B`): `--logdir` takes only one, so `--logdir_spec` names each
    by its folder name (its index when two share one); run names keep the head, so the colour regex still works.
    A spec is comma-separated, so folders with a comma in their path (sweep jobs) fall back to their common parent."""
    paths = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    wider = ""
    if len(paths) > 1 and any("," in str(p) for p in paths):
        paths = [Path(os.path.commonpath([p.absolute() for p in paths]))]
        wider = f"  (every run under {paths[0]} shows, not only the compared ones)"
    if len(paths) == 1:
        flag = f"--logdir {shlex.quote(str(paths[0]))}"
    else:
        names = [p.name for p in paths]
        names = [n if n and names.count(n) == 1 else str(i) for i, n in enumerate(names)]
        flag = "--logdir_spec " + shlex.quote(",".join(f"{n}:{p}" for n, p in zip(names, paths)))
    return f"compare: tensorboard {flag}    then open {tensorboard_url()}{wider}"
