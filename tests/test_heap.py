"""etf-train keeps freed memory in glibc's heap (etf_train/heap.py): seen through glibc's own count of the blocks it
maps for single allocations, in fresh interpreters, so the pytest process's allocator state plays no part."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

glibc = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# In a fresh interpreter: glibc's count of mmapped blocks (mallinfo2's hblks) while a 4 MB buffer is alive, after
# etf_train.heap.keep_freed_memory() or without it; printed as JSON.
PROBE = """
import ctypes, json, sys
from etf_train.heap import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2().hblks
block = bytearray(4 << 20)
print(json.dumps({"kept": kept, "mapped": libc.mallinfo2().hblks - before}))
"""


def probe(mode: str, env: dict | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(not glibc, reason="glibc's allocator only")
def test_a_4_mb_block_comes_from_the_heap_once_kept():
    """Catches keep_freed_memory not reaching glibc (wrong parameter numbers: a 256 MB mmap threshold is refused),
    and the control: glibc's default maps such a block on its own, and gives it back to the kernel when freed."""
    assert probe("default") == {"kept": None, "mapped": 1}
    assert probe("keep") == {"kept": True, "mapped": 0}


@pytest.mark.skipif(not glibc, reason="glibc's allocator only")
def test_a_users_own_malloc_setting_is_left_alone():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    assert probe("keep", env) == {"kept": False, "mapped": 1}


def test_the_cli_keeps_freed_memory_at_start(monkeypatch):
    """Catches the CLI not calling it (a sweep's forked jobs inherit what the parent set)."""
    from etf_train import cli
    from etf_train.command import Command

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    cli.set_process_env(Command(()))
    assert calls == [1]
