#!/usr/bin/env python
"""AGD's eta on the first steps of a learned-head run, with and without the classifier's gradient term
(docs/results.md, "The depth confound"; issue 26, item 3).

AGD (etf_train/training/agd.py) takes one step size for every weight tensor:
    G = (1/L) sum_l s_l sum_p ||g_l[:, :, p]||_F,    eta = log((1 + sqrt(1 + 4 G)) / 2),
and moves tensor l by gain (eta / L) s_l g_l / ||g_l||. On UFM with a learned classifier there are two tensors, the
feature table (backbone) and the classifier (head). "Without" is eta from the feature table's term alone, with the
same L: the step the features would take if the classifier's gradient were left out of the average. The ratio
with / without is therefore the ratio of the two feature steps.

The script runs etf-train in this process (the CLI's own path, one run into a temporary folder) with AGD's step
wrapped so that it records both values from the gradients it is about to use, and checks that the "with" value is
the eta AGD then takes. Default setting, the one docs/results.md quotes:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_agd_eta.py
        # = experiment=ufm10_authors optimizer.depth=2 head=learned_authors seed=1 trainer.max_epochs=2

Extra arguments are etf-train overrides added after those (e.g. experiment=ufm100_authors dataset.per_class=50).
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import tempfile

import torch

from etf_train import cli
from etf_train.training import agd

DEFAULT = [
    "experiment=ufm10_authors",
    "optimizer.depth=2",
    "head=learned_authors",
    "seed=1",
    "trainer.max_epochs=2",
    "trainer.progress=false",
    "metrics.every_n_epochs=2",
]
records: list[dict] = []
_step = agd.AGD.step


def _eta(G: torch.Tensor) -> float:
    return float(torch.log((1 + torch.sqrt(1 + 4 * G)) / 2))


def recording_step(self: agd.AGD, closure=None):
    with torch.no_grad():
        named = [(n, p) for n, p in self._named() if p.grad is not None]
        terms = {
            n: float(agd.agd_scale(p.shape) * torch.linalg.vector_norm(agd._matrices(p.grad), dim=(0, 1)).sum())
            for n, p in named
        }
    feature = [n for n in terms if n.startswith("backbone.")]
    assert len(feature) == 1, f"expected one feature table among {list(terms)}"
    L = self.depth
    rec = {
        "terms": terms,
        "L": L,
        "with": _eta(torch.tensor(sum(terms.values()) / L)),
        "without": _eta(torch.tensor(terms[feature[0]] / L)),
    }
    out = _step(self, closure)
    rec["agd"] = float(self.last_eta)  # the eta AGD took: must equal "with"
    records.append(rec)
    return out


def main() -> None:
    agd.AGD.step = recording_step
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = ["etf-train", *DEFAULT, *extra, f"hydra.run.dir={tmp}/run"]
        log = io.StringIO()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                cli.main()
            except SystemExit as e:
                if e.code not in (0, None):
                    print(log.getvalue(), file=sys.stderr)
                    raise
    print("setting:", " ".join(DEFAULT + extra))
    if not records:
        sys.exit("no AGD step was taken (is optimizer=agd in the setting?)")
    names = list(records[0]["terms"])
    print(f"L = {records[0]['L']}; weight tensors: {', '.join(names)}")
    print(
        "step | "
        + " | ".join(f"s*||g|| {n}" for n in names)
        + " | eta with classifier | eta feature term only | ratio | AGD's eta"
    )
    for i, r in enumerate(records, 1):
        assert math.isclose(r["with"], r["agd"], rel_tol=1e-5), (r["with"], r["agd"])
        cells = [f"{r['terms'][n]:.4f}" for n in names]
        print(
            f"{i} | "
            + " | ".join(cells)
            + f" | {r['with']:.4f} | {r['without']:.4f} | {r['with'] / r['without']:.3f} | {r['agd']:.4f}"
        )


if __name__ == "__main__":
    main()
