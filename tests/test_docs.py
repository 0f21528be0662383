"""The docs name real tests: every row of docs/reliability.md is held by a test that exists."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _tests(path: Path) -> set[str]:
    return {
        n.name
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    }


def test_every_test_named_in_reliability_md_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 30
    named = 0
    for row in rows:
        refs = re.findall(r"(test_\w+\.py)?::(test_\w+)|`(test_\w+\.py)`", row)
        assert refs, f"row without a test: {row[:80]}"
        current = None
        for file, name, bare in refs:
            current = file or bare or current
            if name:
                assert name in _tests(ROOT / "tests" / current), (
                    f"{current}::{name} (docs/reliability.md) does not exist"
                )
                named += 1
    assert named >= 30


def test_the_etf_compare_options_page_is_its_help(monkeypatch):
    """docs/etf-compare.md holds `etf-compare --help` at 100 columns: an option, default, choice or help text changed
    in one place only fails here. Whitespace is compared loosely, as argparse's layout varies across Pythons."""
    from etf_train.compare import _parser

    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width
    page = (ROOT / "docs" / "etf-compare.md").read_text()
    block = page.split("```text\n", 1)[1].split("```", 1)[0]
    assert block.split() == _parser().format_help().split(), (
        "docs/etf-compare.md differs from the command's help: regenerate it with `COLUMNS=100 etf-compare --help`"
    )
