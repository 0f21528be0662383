"""`etf-compare --serve` in-process, TensorBoard replaced by a stand-in process (issue 30, item 3): the real server
is only started in a subprocess test (test_compare_answer), which a mutation run cannot attribute to serve(), so
these pin what serve() hands the server, prints, returns and cleans up. Each comment names the mutants it kills."""

from __future__ import annotations

import errno
import importlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from omegaconf import OmegaConf

from etf_train.compare.runs import RecordedRun
from etf_train.errors import EtfTrainError
from etf_train.rundir import RunState

serve_module = importlib.import_module("etf_train.compare.serve")  # the package's `serve` is the function


def recorded(tmp_path: Path, name: str, seed: int | None) -> RecordedRun:
    """A run folder with one (fake) event file and a config naming its seed (none: the key is absent)."""
    folder = tmp_path / "runs" / name
    folder.mkdir(parents=True)
    events = folder / f"events.out.tfevents.{name}"
    events.write_bytes(name.encode())
    cfg = OmegaConf.create({"head": {"name": "learned"}} | ({} if seed is None else {"seed": seed}))
    return RecordedRun(folder, cfg, {}, RunState("finished"), events=(events,))


class FakeServer:
    """subprocess.Popen's stand-in: records what serve() does with it; `script` says how communicate() ends."""

    made: list[FakeServer] = []

    def __init__(self, cmd, **kwargs):
        self.cmd, self.kwargs, self.signals, self.calls = cmd, kwargs, [], []
        self.returncode = None
        self.script = FakeServer.script
        self.seen = None
        FakeServer.made.append(self)

    def send_signal(self, signum):
        self.signals.append(signum)

    def communicate(self, timeout=None):
        self.calls.append(timeout)
        logdir = Path(self.cmd[self.cmd.index("--logdir") + 1])
        self.seen = sorted(str(p.relative_to(logdir)) for p in logdir.rglob("*") if p.is_file())
        self.handler = signal.getsignal(signal.SIGTERM)
        self.stdout_flushed = getattr(sys.stdout, "flushed", None)
        step = self.script.pop(0)
        if step == "gone":  # the copies removed behind serve's back (a tmp cleaner): its own rmtree must not fail
            shutil.rmtree(logdir)
            step = (0, "")
        if step == "interrupt":
            raise KeyboardInterrupt
        self.returncode, err = step
        return None, err


@pytest.fixture
def server(monkeypatch):
    FakeServer.made = []
    FakeServer.script = [(0, "")]
    monkeypatch.setattr(subprocess, "Popen", FakeServer)
    return FakeServer


def test_serve_hands_tensorboard_a_copy_of_the_runs_named_by_group_and_seed(tmp_path, server, capsys):
    """Kills mutants of the command line (module, --logdir, --host, --port and their values), of the copies (names,
    event files), of the printed counts and link, and of the return value; the copy is gone afterwards (rmtree)."""
    groups = {"head=learned": [recorded(tmp_path, "a", 1), recorded(tmp_path, "b", 2)], "head=fixed_etf": []}
    assert serve_module.serve(groups, "127.0.0.1", 7123) == 0
    [proc] = server.made
    logdir = proc.cmd[proc.cmd.index("--logdir") + 1]
    assert proc.cmd == [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1"] + [
        "--port",
        "7123",
    ]
    assert Path(logdir).name.startswith("etf-compare-view-") and not Path(logdir).exists()
    assert proc.seen == ["learned/seed1/events.out.tfevents.a", "learned/seed2/events.out.tfevents.b"]
    assert proc.kwargs == {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    out = capsys.readouterr().out
    colour = quote("regex:^([^/]+)/", safe="")
    assert out.startswith("etf-compare: TensorBoard on 2 runs (2 groups), one colour per group: http://127.0.0.1:7123/")
    assert f"runColorGroup={colour}" in out and out.endswith("\netf-compare: Ctrl-C stops it\n")
    assert proc.calls == [None]


def test_while_serving_sigterm_asks_the_server_to_stop_and_the_old_handler_comes_back(tmp_path, server):
    """Kills mutants that install no SIGTERM handler, send the server another signal, or leave the handler behind."""

    def before(*_):
        pass

    previous = signal.signal(signal.SIGTERM, before)
    try:
        serve_module.serve({"g": [recorded(tmp_path, "a", 1)]}, "127.0.0.1", 7123)
        [proc] = server.made
        assert proc.handler not in (before, signal.SIG_DFL, None)
        proc.handler(signal.SIGTERM, None)
        assert proc.signals == [signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_stops_the_server_waits_for_it_and_returns_0(tmp_path, server):
    """Kills mutants of the KeyboardInterrupt branch: the signal sent, the 30 s wait, the status returned."""
    server.script = ["interrupt", (-signal.SIGINT, "")]
    assert serve_module.serve({"g": [recorded(tmp_path, "a", 1)]}, "127.0.0.1", 7123) == 0
    [proc] = server.made
    assert proc.signals == [signal.SIGINT] and proc.calls == [None, 30]


@pytest.mark.parametrize(
    ("status", "err", "expected", "said"),
    [
        (0, "chatter\n", 0, ""),
        (-signal.SIGINT, "bye\n", 0, ""),
        (1, "first\nsecond\nE0101 address in use\n\n", 2, "TensorBoard stopped: E0101 address in use"),
        (3, "", 2, "TensorBoard stopped: exit 3"),
        (-9, None, 2, "TensorBoard stopped: exit -9"),
    ],
)
def test_a_server_that_dies_is_reported_with_its_last_line(tmp_path, server, capsys, status, err, expected, said):
    """Kills mutants of the accepted statuses (0 and -SIGINT), of the last-line pick ([+1:] too: three lines) and
    its fallback, and of the 2 returned."""
    server.script = [(status, err)]
    assert serve_module.serve({"g": [recorded(tmp_path, "a", 1)]}, "127.0.0.1", 7123) == expected
    stderr = capsys.readouterr().err
    assert stderr == (f"etf-compare: error: {said}\n" if said else "")


@pytest.mark.parametrize("port", [None, 0])
def test_no_port_means_a_free_one_on_that_host(tmp_path, server, monkeypatch, port):
    """Kills mutants of `port in (None, 0)` and of the host handed to free_port."""
    asked = []
    monkeypatch.setattr(serve_module, "free_port", lambda host: asked.append(host) or 45678)
    serve_module.serve({"g": [recorded(tmp_path, "a", 1)]}, "127.0.0.1", port)
    assert asked == ["127.0.0.1"] and server.made[0].cmd[-2:] == ["--port", "45678"]


def test_free_port_is_one_nobody_holds_and_a_bad_host_is_one_line():
    """Kills mutants of the bind (host, 0): port 1 binds too when the tests run as root, but is never an ephemeral
    port; of the port returned; and of the error's text (strerror, not the exception's repr)."""
    port = serve_module.free_port("127.0.0.1")
    assert 1024 <= port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free: bindable
    with pytest.raises(EtfTrainError) as e:
        serve_module.free_port("192.0.2.1")  # TEST-NET-1: no interface of this machine has it
    assert str(e.value) == f"--host 192.0.2.1: cannot listen there ({os.strerror(errno.EADDRNOTAVAIL)})"


class Recorder(io.StringIO):
    flushed = ""

    def flush(self):
        self.flushed = self.getvalue()


def test_the_link_is_flushed_before_serving_and_a_vanished_copy_is_no_error(tmp_path, server, monkeypatch):
    """Kills the print's flush mutants (None, False, dropped): with stdout a pipe the link would show only once
    TensorBoard ends; and rmtree's ignore_errors mutants (None, False, dropped): the copies already gone."""
    monkeypatch.setattr(sys, "stdout", Recorder())
    server.script = ["gone"]
    assert serve_module.serve({"g": [recorded(tmp_path, "a", 1)]}, "127.0.0.1", 7123) == 0
    assert "etf-compare: Ctrl-C stops it\n" in server.made[0].stdout_flushed


def test_two_runs_of_one_seed_and_a_run_without_a_seed_keep_distinct_names(tmp_path):
    """Kills mutants of the duplicate counter (k starts at 2) and of the seedless name (the run's folder)."""
    groups = {"head=x/y": [recorded(tmp_path, "a", 1), recorded(tmp_path, "b", 1), recorded(tmp_path, "c", 1)]}
    groups["head=z"] = [recorded(tmp_path, "d", None)]
    names = serve_module.view_folder(groups, tmp_path / "view")
    assert names == ["x_y/seed1", "x_y/seed1 (2)", "x_y/seed1 (3)", "z/d"]
    assert (tmp_path / "view" / "x_y" / "seed1 (3)" / "events.out.tfevents.c").read_bytes() == b"c"


def test_etf_compare_serve_flushes_its_report_first_and_serves_on_the_port_given(tmp_path, server, monkeypatch):
    """With stdout a pipe, the table and link printed before TensorBoard starts must be flushed, or they show only
    once it ends; --port is the one TensorBoard gets."""
    from etf_train.compare import main

    from .test_compare import make_run

    make_run(tmp_path / "sweep" / "0", "learned", 1)
    monkeypatch.setattr(sys, "stdout", Recorder())
    assert (
        main([str(tmp_path / "sweep"), "--out", str(tmp_path), "--serve", "--port", "7124", "--metrics", "test/acc"])
        == 0
    )
    [proc] = server.made
    assert proc.cmd[-2:] == ["--port", "7124"]
    assert "wrote " in proc.stdout_flushed and "etf-compare: Ctrl-C stops it\n" in proc.stdout_flushed
