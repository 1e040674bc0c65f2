"""Make student copies of the notebooks: solutions out, everything else unchanged.

In the course notebooks each exercise's solution sits between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` lines (nbgrader's markers). A student copy replaces each such block by a stub
that raises ``NotImplementedError``, and tags the exercise cell and the check cell after it with
``raises-exception``. JupyterLab's "Run All" and nbval then carry on past an unfinished exercise,
and the rest of the notebook runs on the library's reference code.

    python -m course_lib.student notebooks/ student/     # what `make student` runs
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TAG = "raises-exception"
STUB = 'raise NotImplementedError("Exercise not done yet: replace this line with your code.")'
_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)" + re.escape(BEGIN) + r"[^\n]*\n.*?^[ \t]*" + re.escape(END) + r"[^\n]*$",
    re.MULTILINE | re.DOTALL,
)
# A check call at the start of a line (not indented): `checks.check_merge(merge)`.
CHECK_CALL = re.compile(r"^checks\.check_(\w+)\(", re.MULTILINE)


def strip_solutions(source: str) -> str:
    """Replace every solution block in a cell's source with an indented stub."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"Unbalanced solution markers in a cell:\n{source[:300]}")
    return _BLOCK.sub(lambda m: f"{m['indent']}# YOUR CODE HERE\n{m['indent']}{STUB}", source)


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tag(cell) -> None:
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if TAG not in tags:
        tags.append(TAG)


def checks_in(cell) -> list[str]:
    """The exercises a code cell checks (``checks.check_<name>(`` at the start of a line),
    by name; none for an exercise cell itself. Student copies and nbgrader's grading both
    find check cells with this."""
    if cell["cell_type"] != "code" or BEGIN in _source(cell):
        return []
    return CHECK_CALL.findall(_source(cell))


def student_notebook(nb: dict) -> tuple[dict, int]:
    """Return a student copy of a notebook (as parsed JSON) and the number of exercises."""
    cells = [dict(c, metadata=dict(c.get("metadata", {}))) for c in nb["cells"]]
    n = 0
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or BEGIN not in _source(cell):
            continue
        n += 1
        cell["source"] = strip_solutions(_source(cell))
        cell["outputs"], cell["execution_count"] = [], None
        _tag(cell)
        # The checks that follow the exercise (one cell each, or several in one) fail until
        # the learner has written it.
        tagged = False
        for nxt in cells[i + 1:]:
            if nxt["cell_type"] != "code":
                if tagged:
                    break
                continue  # prose between the exercise and its check
            if not checks_in(nxt):
                break
            _tag(nxt)
            tagged = True
    return dict(nb, cells=cells), n


def make_student_copies(src: Path, dest: Path) -> dict[str, int]:
    """Write a student copy of every ``src/*.ipynb`` into ``dest``; returns exercises per file."""
    dest.mkdir(parents=True, exist_ok=True)
    counts = {}
    for path in sorted(Path(src).glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        copy, counts[path.name] = student_notebook(nb)
        (dest / path.name).write_text(json.dumps(copy, indent=1, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("src", type=Path, nargs="?", default=Path("notebooks"))
    p.add_argument("dest", type=Path, nargs="?", default=Path("student"))
    args = p.parse_args(argv)
    for name, n in make_student_copies(args.src, args.dest).items():
        print(f"{args.dest / name}: {n} exercise(s) stubbed")


if __name__ == "__main__":
    main()
