#!/usr/bin/env bash
# make mutate: mutmut over the modules that pyproject.toml [tool.mutmut] lists (docs/mutation.md), on a snapshot of
# the committed HEAD, never on the working tree: the numbers belong to one commit, and edits in progress in this
# folder neither leak into the run nor get touched by it.
#
#   scripts/mutate.sh                  a fresh run: .mutate/ is rebuilt from HEAD, every mutant is tested
#   scripts/mutate.sh NAME [NAME ...]  re-test these mutants (names or globs as `mutmut results` prints them) in the
#                                      last run's .mutate/, after bringing its source and tests up to HEAD
#
# Two children (the machine has 2 cores), one thread each. Ends with the counts and the score, and writes the
# survivors with their diffs to .mutate/survivors.txt.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${MUTATE_DIR:-$root/.mutate}
bin=$root/.venv/bin
children=${MUTATE_CHILDREN:-2}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export TQDM_DISABLE=1 MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1

commit=$(git -C "$root" rev-parse HEAD)
if [ $# -eq 0 ]; then
  rm -rf "$dir"
elif [ ! -d "$dir/mutants" ]; then
  echo "mutate: no earlier run in $dir to re-test mutants in; run it without arguments first" >&2
  exit 2
fi
mkdir -p "$dir/mutants"
# The snapshot: HEAD's files, replacing whatever an earlier snapshot left (mutants/ keeps its results; mutmut
# re-mutates a changed file and keeps the results of its unchanged functions).
find "$dir" -mindepth 1 -maxdepth 1 ! -name mutants ! -name survivors.txt -exec rm -rf {} +
git -C "$root" archive HEAD | tar -x -C "$dir"
echo "$commit" > "$dir/COMMIT"

cd "$dir"
# A test's subprocess (etf-train, python -m ...) imports this snapshot's unmutated package, not the working tree
# that the editable install points at. The run itself drops "." (this folder) from its own path and puts mutants/
# first, so in-process the tests import the mutated copy (mutmut's forced-fail check proves it before the run).
export PYTHONPATH=$dir
# and it is not a git checkout: git must not find this repository above it (rundir.code_version, its tests)
export GIT_CEILING_DIRECTORIES=$root
start=$(date +%s)
"$bin/mutmut" run --max-children "$children" "$@"
end=$(date +%s)

"$bin/python" - "$commit" "$((end - start))" "$dir" <<'EOF'
import sys
from collections import Counter

from mutmut.__main__ import get_diff_for_mutant
from mutmut.mutation.data import SourceFileMutationData
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

commit, wall, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
counts, survivors = Counter(), []
for path in walk_mutatable_files():
    data = SourceFileMutationData(path=path)
    data.load()
    for name, code in data.exit_code_by_key.items():
        status = status_by_exit_code[code]
        counts[status] += 1
        if status != "killed":
            survivors.append((name, status, path))
total = sum(counts.values())
tested = total - counts["skipped"]
caught = counts["killed"] + counts["timeout"]
with open("survivors.txt", "w") as out:
    for name, status, path in survivors:
        out.write(f"# {name}: {status}\n{get_diff_for_mutant(name, path=path)}\n")
print(f"commit {commit}, {wall} s")
print("  ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"  total {total}")
print(f"score {100 * caught / max(tested, 1):.2f} % = (killed {counts['killed']} + timeout {counts['timeout']}) / {tested}")
print(f"not killed: {len(survivors)}, listed with their diffs in {where}/survivors.txt")
EOF
