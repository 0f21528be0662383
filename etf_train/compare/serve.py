"""`etf-compare --serve`: TensorBoard for exactly the compared runs, named `<group>/seed<n>` so that the link colours
them by group, on a free port (or --port), until Ctrl-C."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import EtfTrainError
from ..view import tensorboard_url
from .runs import RecordedRun, config_text
from .setting import readable

GROUP_COLOURS = "regex:^([^/]+)/"  # one colour per top folder: the group


def view_folder(groups: dict[str, list[RecordedRun]], root: Path) -> list[str]:
    """Copies of the runs' event files under root/<group>/seed<n> (TensorBoard names runs by folder); the names."""
    names = []
    for label, runs in groups.items():
        group = re.sub(r"[/\\\\]", "_", readable(label))
        for run in runs:
            seed = config_text(run, "seed")
            name, k = f"{group}/seed{seed}" if seed != "-" else f"{group}/{run.path.name}", 1
            while name in names:  # the same seed given twice: keep both
                k += 1
                name = f"{group}/seed{seed} ({k})"
            (root / name).mkdir(parents=True)
            for events in run.events:
                shutil.copy2(events, root / name / events.name)
            names.append(name)
    return names


def free_port(host: str) -> int:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    except OSError as e:  # a name that does not resolve, an address of another machine
        raise EtfTrainError(f"--host {host}: cannot listen there ({e.strerror or e})") from None


def serve(groups: dict[str, list[RecordedRun]], host: str, port: int | None) -> int:
    """Start TensorBoard on the compared runs, print its link, wait; Ctrl-C (or SIGTERM) stops it and removes the
    copies. Returns TensorBoard's exit status (0 when stopped so)."""
    root = Path(tempfile.mkdtemp(prefix="etf-compare-view-"))
    try:
        names = view_folder(groups, root)
        port = free_port(host) if port in (None, 0) else port
        cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", host, "--port", str(port)]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        print(
            f"etf-compare: TensorBoard on {len(names)} runs ({len(groups)} groups), one colour per group: "
            f"{tensorboard_url(port, host, GROUP_COLOURS)}\netf-compare: Ctrl-C stops it",
            flush=True,
        )
        previous = signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGINT))
        try:
            _, err = server.communicate()
        except KeyboardInterrupt:
            server.send_signal(signal.SIGINT)
            server.communicate(timeout=30)
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
        if server.returncode not in (0, -signal.SIGINT):
            last = (err or "").strip().splitlines()[-1:] or [f"exit {server.returncode}"]
            print(f"etf-compare: error: TensorBoard stopped: {last[0]}", file=sys.stderr)
            return 2
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
