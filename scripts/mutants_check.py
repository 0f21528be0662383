"""Re-test the mutants that the last `make mutate` run did not kill against some test files, in seconds a mutant
rather than with mutmut's stats pass first (docs/mutation.md, "Checking a test against a mutant").

    .venv/bin/python scripts/mutants_check.py "etf_train.compare.*" tests/test_mutants_compare.py [more test files]
    .venv/bin/python scripts/mutants_check.py --untested 4 "etf_train.*"
    .venv/bin/python scripts/mutants_check.py --names FILE "etf_train.rundir.*" tests/test_x.py

With --names FILE it re-tests the mutants FILE names against the test files, whatever the last run said of them
(FILE: a name a line, or the JSON lines of a triage, a "name" and a "verdict" each: those not "killed"); with
--untested too, it triages them against their recorded tests instead.

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


def untested(pattern: str, only: set[str] | None = None) -> list[tuple[str, list[str]]]:
    """The mutants the last run never reached (or those `only` names), each with its recorded tests fastest first,
    cheapest mutants first."""
    from mutmut.__main__ import mangled_name_from_mutant_name

    stats = json.loads((MUTANTS / "mutmut-stats.json").read_text())
    seconds, tests_of = stats["duration_by_test"], stats["tests_by_mangled_function_name"]
    found = []
    for meta in sorted(MUTANTS.glob("etf_train/**/*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if (code is None if only is None else name in only) and fnmatch.fnmatch(name, pattern):
                tests = sorted(tests_of.get(mangled_name_from_mutant_name(name), []), key=seconds.__getitem__)
                found.append((sum(map(seconds.__getitem__, tests)), name, tests))
    return [(name, tests) for _, name, tests in sorted(found)]


def named(path: str, pattern: str) -> list[str]:
    names = []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line) if line.startswith("{") else {"name": line.strip()}
        if row["name"] and row.get("verdict") != "killed" and fnmatch.fnmatch(row["name"], pattern):
            names.append(row["name"])
    return names


def warm_up() -> None:
    """Import and collect the selected tests once, here, as mutmut does before its first mutant: the forks then start
    with torch and the test modules loaded (seconds a mutant otherwise); the frozen heap is not collected again."""
    import gc

    import pytest
    import tomllib

    selection = tomllib.loads((MUTANTS / "pyproject.toml").read_text())["tool"]["mutmut"]
    quiet, out, err = os.open(os.devnull, os.O_WRONLY), os.dup(1), os.dup(2)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    pytest.main(["--collect-only", "-qqq", "-p", "no:cacheprovider", *selection["pytest_add_cli_args_test_selection"]])
    os.dup2(out, 1)
    os.dup2(err, 2)
    gc.collect()
    gc.freeze()


def killed(name: str, tests: list[str], limit: float = 30) -> bool | None:
    """Whether the tests fail with this mutant; None when they ran past `limit` seconds without failing."""
    pid = os.fork()
    if pid == 0:
        import pytest

        os.environ["MUTANT_UNDER_TEST"] = name
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        signal.setitimer(signal.ITIMER_REAL, limit)
        os._exit(int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests])))
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return None if code == -signal.SIGALRM else code not in (0, 5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pattern", help='module pattern, e.g. "etf_train.compare.*"')
    p.add_argument("tests", nargs="*", help="test files, relative to the repository root")
    p.add_argument("--untested", type=float, metavar="S", help="triage the mutants the last run never reached")
    p.add_argument("--names", metavar="FILE", help="re-test the mutants this file names")
    args = p.parse_args()
    os.chdir(MUTANTS)
    sys.path.insert(0, str(MUTANTS))  # the mutated package first, as in mutmut's workers
    if args.untested:
        warm_up()
        only = set(named(args.names, "*")) if args.names else None
        for name, tests in untested(args.pattern + "*", only):
            dead = killed(name, tests, args.untested) if tests else False
            print(f"{'killed' if dead else f'not killed in {args.untested:g} s'}: {name}", flush=True)
        return
    if args.names:
        warm_up()
    names = named(args.names, args.pattern + "*") if args.names else not_killed(args.pattern)
    alive = 0
    for name in names:  # a line each as it is known: a run over many mutants can be stopped and still read
        dead = killed(name, args.tests)
        alive += dead is False
        status = (
            "killed" if dead else "alive" if dead is False else "timeout (an endless loop: caught, as mutmut counts it)"
        )
        print(f"{status}: {name}", flush=True)
    print(f"{len(names)} mutants re-tested; killed now {len(names) - alive}, alive {alive}")


if __name__ == "__main__":
    main()
