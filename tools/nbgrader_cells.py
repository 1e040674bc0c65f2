"""Stamp nbgrader's metadata on the notebooks' exercise and check cells.

    python tools/nbgrader_cells.py                 # stamp notebooks/NN_*.ipynb where needed
    python tools/nbgrader_cells.py --check         # exit 1, listing what is missing or stale
    python tools/nbgrader_cells.py PATH [PATH ...] # notebooks or folders of them

Each exercise cell (the one holding ``### BEGIN SOLUTION``) becomes an nbgrader solution cell and
each check cell after it an autograded test cell worth one point, with grade_ids derived from the
exercise (``ex3_merge`` and ``ex3_merge_check``); a check written inside an exercise cell, or two
checks in one cell, get cells of their own. Running it again changes nothing.
``course_lib/grading.py`` holds the rules; ``tools/check_notebooks.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # course_lib from this checkout, installed or not

from course_lib import grading  # noqa: E402


def notebook_paths(args: list[Path]) -> list[Path]:
    """The notebooks named by ``args`` (files or folders; default: the course's notebooks)."""
    if not args:
        return grading.course_notebooks()
    paths = []
    for p in args:
        if p.is_dir():
            paths += grading.course_notebooks(p)
        elif p.suffix == ".ipynb" and p.exists():
            paths.append(p)
        else:
            raise SystemExit(f"error: {p} is not a notebook or a folder of notebooks")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("paths", type=Path, nargs="*")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if out of date")
    args = p.parse_args(argv)
    stale, failed = 0, 0
    for path in notebook_paths(args.paths):
        try:
            nb, changes = grading.stamp(grading.read_notebook(path))
        except ValueError as err:
            print(f"{path}: {err}")
            failed += 1
            continue
        if not changes:
            continue
        stale += 1
        for change in changes:
            print(f"{path}: {change}")
        if not args.check:
            grading.write_notebook(nb, path)
    if failed:
        return 1
    if args.check and stale:
        print(f"{stale} notebook(s) lack nbgrader's metadata or carry it stale. "
              f"Fix with: {grading.STAMP_COMMAND}")
        return 1
    print(f"{stale} notebook(s) stamped." if stale else "Every notebook is stamped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
