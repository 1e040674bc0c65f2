"""Check that notebooks are stored clean: valid nbformat, no outputs, no execution counts, and
nbgrader's metadata on every exercise and check cell, up to date.

    python tools/check_notebooks.py [NOTEBOOK_OR_FOLDER ...]   # default: notebooks/

Exits 1 and lists each problem otherwise. To clean a notebook: `nbstripout notebooks/*.ipynb`
(or `python tools/sync_colab.py`, which also rewrites notebooks without outputs). To stamp
nbgrader's metadata: `python tools/nbgrader_cells.py` (see course_lib/grading.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # course_lib from this checkout, installed or not

from course_lib import grading  # noqa: E402


def notebook_paths(args: list[str] | None = None) -> list[Path]:
    """The .ipynb files named by ``args`` (files or folders; default ``notebooks/``)."""
    paths = []
    for arg in args or [str(ROOT / "notebooks")]:
        p = Path(arg)
        if p.is_dir():
            paths += [q for q in sorted(p.rglob("*.ipynb")) if ".ipynb_checkpoints" not in q.parts]
        elif p.suffix == ".ipynb":
            paths.append(p)
    return paths


def problems(path: Path) -> list[str]:
    """What is wrong with how the notebook at ``path`` is stored (empty when clean)."""
    try:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        nbformat.validate(nb)
    except Exception as err:  # unreadable or invalid: report, don't crash the whole check
        return [f"{path}: not a valid notebook ({err})"]
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"{path}: cell {i} is stored with outputs")
        if cell.get("execution_count") is not None:
            found.append(f"{path}: cell {i} is stored with an execution count")
    return found


def grading_problems(path: Path) -> list[str]:
    """What is missing or stale in nbgrader's metadata of a notebook with exercises (one that
    holds solutions; a student copy has none and is not checked)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        return [f"{path}: cannot read ({err})"]
    if grading.BEGIN not in text:
        return []
    return grading.stamp_problems(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    paths = notebook_paths(argv)
    found = [msg for p in paths for msg in problems(p)]
    for msg in found:
        print(msg)
    if found:
        print("Clean them with: nbstripout notebooks/*.ipynb")
    unstamped = [msg for p in paths for msg in grading_problems(p)]
    for msg in unstamped:
        print(msg)
    if unstamped:
        print(f"Stamp nbgrader's metadata with: {grading.STAMP_COMMAND}")
    if found or unstamped:
        return 1
    print(f"{len(paths)} notebook(s) stored without outputs, with nbgrader's metadata.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
