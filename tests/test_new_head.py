"""A head is one module plus one yaml: a head defined and registered here, with its config in a folder of its own
(Hydra's searchpath), trains through the real `etf-train` command and is compared by etf-compare like the others."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from etf_train.compare import main as etf_compare
from etf_train.heads import HEADS, Head
from etf_train.rundir import is_finished, read_record, read_scalars

from .conftest import TINY, etf_train_here


class PrototypeHead(Head):
    """Cosine logits against learned class prototypes, each renormalised at every forward."""

    def __init__(self, num_classes, dim, tau=5.0, normalize=True, init_scale=1.0):
        super().__init__(num_classes, dim, tau, normalize)
        self.prototypes = nn.Parameter(init_scale * torch.randn(num_classes, dim))

    @property
    def weight(self):
        return F.normalize(self.prototypes, dim=1)

    def classify(self, h, y=None):
        return h @ self.weight.T


def test_a_head_defined_outside_the_package_trains_through_the_cli(tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(HEADS._entries, "prototype", PrototypeHead)
    configs = tmp_path / "configs" / "head"
    configs.mkdir(parents=True)
    (configs / "prototype.yaml").write_text("name: prototype\ntau: 5.0\ninit_scale: 0.5\n")
    for head in ("prototype", "learned"):
        proc = etf_train_here(
            *TINY,
            f"head={head}",
            f"hydra.searchpath=[file://{tmp_path / 'configs'}]",
            f"hydra.run.dir={tmp_path / 'sweep' / head}",
            cwd=tmp_path,
            monkeypatch=monkeypatch,
            capfd=capfd,
        )
        assert proc.returncode == 0, proc.stderr
    run = tmp_path / "sweep" / "prototype"
    assert is_finished(run) and read_record(run)["head"] == {"name": "prototype", "tau": 5.0, "init_scale": 0.5}
    assert list(read_scalars(run)["test/acc"][0]) == [1, 2]
    assert etf_compare([str(tmp_path / "sweep"), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| head=prototype |" in table and "| head=learned |" in table
