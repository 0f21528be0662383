"""How to look at a comparison in TensorBoard: the command, and a URL that opens the comparison view (no smoothing,
one colour per head through a run-name regex, the convergence cards pinned). Printed by etf-train and etf-compare."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

from .errors import EtfTrainError
from .tags import EVAL_ACC, NC1, NC1_LOG10, NC3, TEST_ACC

# The cards a comparison of heads looks at first (README, "TensorBoard scalars").
KEY_CARDS = (TEST_ACC, EVAL_ACC, NC1, NC3)
# What the printed link pins: NC1 as its log10, which spans decades on TensorBoard's linear axis (a link cannot set
# a card's log scale).
PINNED = (TEST_ACC, EVAL_ACC, NC1_LOG10, NC3)
# Run names carry the head: `head=nearest_etf,seed=2` (sweep jobs) or `<time>_nearest_etf_seed2_<id>` (single runs).
HEAD_REGEX = "(learned_authors|fixed_etf_authors|learned|fixed_etf|nearest_etf)"
ADDRESS_ENV = "ETF_TENSORBOARD"  # host:port of the TensorBoard the printed commands and links name


def address(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """(host, port) for TensorBoard: as given, else from $ETF_TENSORBOARD (`host:port`, `host` or `:port`), else
    localhost:6006."""
    env = os.environ.get(ADDRESS_ENV, "")
    env_host, colon, env_port = env.rpartition(":")
    if not colon:
        env_host, env_port = env, ""
    if env_port and not env_port.isdigit():
        raise EtfTrainError(f"{ADDRESS_ENV}={env!r}: give host:port, host or :port (port a number)")
    return host or env_host or "localhost", port if port is not None else int(env_port or 6006)


def tensorboard_url(port: int | None = None, host: str | None = None, color: str = f"regex:{HEAD_REGEX}") -> str:
    """The time-series view with smoothing 0, runs coloured by `color` (by head) and the key cards pinned."""
    host, port = address(host, port)
    pinned = json.dumps([{"plugin": "scalars", "tag": tag} for tag in PINNED], separators=(",", ":"))
    # forceSVG: charts drawn as SVG, which every browser shows (WebGL charts stay blank without a GPU context)
    query = urlencode({"smoothing": 0, "forceSVG": "true", "runColorGroup": color, "pinnedCards": pinned})
    return f"http://{host}:{port}/?{query}#timeseries"


def how_to_look(folders: Path | str | Sequence[Path | str], host: str | None = None, port: int | None = None) -> str:
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
    host, port = address(host, port)
    where = "" if (host, port) == ("localhost", 6006) else f" --host {host} --port {port}"
    return f"compare: tensorboard {flag}{where}    then open {tensorboard_url(port, host)}{wider}"
