"""Screenshots of the TensorBoard link etf-compare prints, before and after issue 23, in headless Chromium.

    python scripts/tensorboard_shots.py SWEEP_FOLDER docs/figures        # needs `chromium` on the PATH

before: TensorBoard on the sweep folder, opened at the link etf-train printed until issue 23 (NC1 pinned on its
        linear axis, runs coloured by the head in their names);
after:  `etf-compare SWEEP --serve`, opened at the link it prints (NC1's log10 pinned, one colour per group, runs
        named group/seed).
Both with forceSVG (WebGL charts stay blank in a headless browser; the printed link asks for SVG too).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

OLD_PINNED = ("test/acc", "train/eval_acc", "nc/nc1", "nc/nc3")
OLD_REGEX = "regex:(learned_authors|fixed_etf_authors|learned|fixed_etf|nearest_etf)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_for(port: int) -> None:
    for _ in range(240):
        try:
            if json.load(urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=5)):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"no TensorBoard answered on port {port}")


def shot(url: str, path: Path) -> None:
    subprocess.run(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1600,1100",
            "--virtual-time-budget=30000",
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    print("wrote", path)


def main() -> None:
    sweep, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep), "--port", str(port), "--host", "localhost"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(port)
        pinned = json.dumps([{"plugin": "scalars", "tag": t} for t in OLD_PINNED], separators=(",", ":"))
        query = urlencode({"smoothing": 0, "forceSVG": "true", "runColorGroup": OLD_REGEX, "pinnedCards": pinned})
        shot(f"http://localhost:{port}/?{query}#timeseries", out / "tensorboard_before.png")
    finally:
        board.terminate()
        board.wait(timeout=30)
    serve = subprocess.Popen(
        [sys.executable, "-m", "etf_train.compare", str(sweep), "--out", str(out / ".compare"), "--serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = next(re.search(r"(http://\S+)", line).group(1) for line in serve.stdout if "TensorBoard on" in line)
        wait_for(int(re.search(r":(\d+)/", url).group(1)))
        shot(url, out / "tensorboard_after.png")
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)


if __name__ == "__main__":
    main()
