"""Re-test the mutants that the last `make mutate` run did not kill against some test files, in seconds a mutant
rather than with mutmut's stats pass first (docs/mutation.md, "Checking a test against a mutant").

    .venv/bin/python scripts/mutants_check.py "etf_train.compare.*" tests/test_mutants_compare.py [more test files]

Each mutant (survived, timeout or no tests in .mutate/mutants/**/*.meta, its module matching the pattern) runs in
a process forked from this one with MUTANT_UNDER_TEST set, as mutmut's own workers do: pytest -x over the test
files, from .mutate/mutants/ (copy new test files into .mutate/mutants/tests/ first), with a 30 s alarm. Prints
a line per mutant as it goes, killed or alive, then the counts. Results are not written back: the next
`make mutate` records them.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import sys
from pathlib import Path

MUTANTS = Path(__file__).resolve().parents[1] / ".mutate" / "mutants"
NOT_KILLED = ("survived", "timeout", "no tests", "suspicious")


def not_killed(pattern: str) -> list[str]:
    from mutmut.stats import status_by_exit_code

    names = []
    for meta in sorted(MUTANTS.glob("etf_train/**/*.py.meta")):
        module = str(meta.relative_to(MUTANTS)).removesuffix(".py.meta").replace("/", ".")
        if fnmatch.fnmatch(module, pattern):
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            names += [name for name, code in codes.items() if status_by_exit_code[code] in NOT_KILLED]
    return names


def killed(name: str, tests: list[str]) -> bool:
    pid = os.fork()
    if pid == 0:
        import pytest

        os.environ["MUTANT_UNDER_TEST"] = name
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        signal.alarm(30)  # an endless loop is caught, as mutmut's timeout would be
        os._exit(int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests])))
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pattern", help='module pattern, e.g. "etf_train.compare.*"')
    p.add_argument("tests", nargs="+", help="test files, relative to the repository root")
    args = p.parse_args()
    os.chdir(MUTANTS)
    sys.path.insert(0, str(MUTANTS))  # the mutated package first, as in mutmut's workers
    names = not_killed(args.pattern)
    alive = 0
    for name in names:  # a line each as it is known: a run over many mutants can be stopped and still read
        dead = killed(name, args.tests)
        alive += not dead
        print(f"{'killed' if dead else 'alive'}: {name}", flush=True)
    print(f"{len(names)} mutants not killed by the last run; killed now {len(names) - alive}, alive {alive}")


if __name__ == "__main__":
    main()
