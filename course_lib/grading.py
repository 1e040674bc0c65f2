"""The notebooks' exercises as nbgrader sees them: solution cells, autograded check cells, points.

The course notebooks follow one pattern. A markdown cell introduces an exercise ("✏️ Exercise
N"); the exercise cell below it holds the solution between ``### BEGIN SOLUTION`` and
``### END SOLUTION``; the cell after it runs the check, ``checks.check_<name>(fn)``, which prints
"✓ ..." or raises ``AssertionError`` with a hint. nbgrader needs that pattern written into the
cells' metadata: the exercise cell is a *solution cell*, the check cell an *autograded test cell*
worth some points, each with a ``grade_id`` that stays the same from one version of the notebook
to the next. :func:`stamp` writes it:

- ``grade_id``: ``ex<N>_<name>`` for the exercise cell and ``ex<N>_<name>_check`` for its check,
  where N is the exercise's number in its heading and ``<name>`` the checked function's name
  (``check_<name>``). Cell ids and positions never enter, so editing prose changes no grade_id.
- points: :data:`POINTS_PER_CHECK` per check cell, and every check cell calls one check. A check
  answers right or wrong, and the exercises are sized alike (one function or module, a few
  minutes each), so one point each is the honest scale.
- a check written in the exercise cell itself, or two checks in one cell, are split into cells of
  their own (nbgrader grades a whole cell: one check per cell gives one score per function).
- every other cell carries no nbgrader metadata (stale metadata is removed).

``stamp`` is idempotent: a stamped notebook comes back unchanged. ``tools/nbgrader_cells.py``
stamps the notebook files; ``tools/check_notebooks.py`` fails when one is not stamped.

A course folder for nbgrader (``python -m course_lib.grading course DIR``, what
``make nbgrader-course`` runs) holds ``nbgrader_config.py`` and ``source/<NN_name>/<NN_name>.ipynb``
per notebook: one assignment per notebook. Its configuration (:func:`configure_nbgrader`) makes
``nbgrader generate_assignment`` write release copies that match ``make student``'s (the same
stub, the exercise and check cells tagged ``raises-exception`` so that Run All carries on past an
unfinished exercise), and gives ``nbgrader autograde`` a per-cell timeout that fits the
notebooks.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

from course_lib.student import BEGIN, CHECK_CALL, END, STUB, TAG, _source, checks_in

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
POINTS_PER_CHECK = 1
SCHEMA_VERSION = 3  # nbgrader's cell-metadata schema (nbgrader >= 0.7)
STAMP_COMMAND = "python tools/nbgrader_cells.py"

# "### ✏️ Exercise 3: ..." or "✏️ **Exercise 3 — ...**"
_HEADING = re.compile(r"✏️\s*(?:\*\*)?\s*Exercise\s+(\d+)")
_DEFINES = re.compile(r"^(?:def|class)\s+(\w+)", re.MULTILINE)


def _is_exercise(cell) -> bool:
    return cell["cell_type"] == "code" and BEGIN in _source(cell)


def solution_metadata(grade_id: str) -> dict:
    """nbgrader's metadata of an autograded answer (what its "Create Assignment" panel writes)."""
    return {"grade": False, "grade_id": grade_id, "locked": False,
            "schema_version": SCHEMA_VERSION, "solution": True, "task": False}


def check_metadata(grade_id: str, points: int = POINTS_PER_CHECK) -> dict:
    """nbgrader's metadata of an autograder test cell: locked, worth ``points``."""
    return {"grade": True, "grade_id": grade_id, "locked": True, "points": points,
            "schema_version": SCHEMA_VERSION, "solution": False, "task": False}


@dataclass(frozen=True)
class GradedExercise:
    """One exercise of a notebook: its number, the exercise cell and its check cells.

    ``solution`` and ``checks`` are cell indices; ``names`` the checked names, one per check
    cell (in a stamped notebook every check cell calls one check).
    """

    number: int
    solution: int
    checks: tuple[int, ...]
    names: tuple[str, ...]
    name: str

    @property
    def grade_id(self) -> str:
        return f"ex{self.number}_{self.name}"

    def check_ids(self) -> list[str]:
        return [f"ex{self.number}_{name}_check" for name in self.names]

    @property
    def points(self) -> int:
        return POINTS_PER_CHECK * len(self.checks)


# ---------------------------------------------------------------- splitting cells


def _split_lines(source: str, starts: list[int]) -> list[str]:
    """``source`` cut before each line index in ``starts``; blank edges trimmed."""
    lines = source.split("\n")
    cuts = [0, *starts, len(lines)]
    parts = ["\n".join(lines[a:b]).strip("\n") for a, b in zip(cuts, cuts[1:])]
    return [p for p in parts if p.strip()]


def _new_cell_id(nb: dict, base: str) -> str:
    taken = {c.get("id") for c in nb["cells"]}
    for k in range(1, 100):
        cid = f"{base}-{k}"[-64:]  # nbformat: 1-64 characters of [a-zA-Z0-9-_]
        if cid not in taken:
            return cid
    raise ValueError(f"no free cell id derived from {base!r}")


def _code_cell(nb: dict, like: dict, source: str) -> dict:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
            "source": source}
    if "id" in like:
        cell = {"id": _new_cell_id(nb, str(like["id"])), **cell}
    return cell


def _split_cells(nb: dict) -> list[str]:
    """Give every check a cell of its own (in place); returns what was split."""
    changes, i = [], 0
    while i < len(nb["cells"]):
        cell = nb["cells"][i]
        src = _source(cell)
        lines = src.split("\n")
        starts = []
        if _is_exercise(cell):
            if src.count(BEGIN) != src.count(END):
                raise ValueError(f"cell {i}: unbalanced {BEGIN!r} / {END!r} markers.")
            last_end = max(k for k, line in enumerate(lines) if END in line)
            starts = [k for k, line in enumerate(lines)
                      if k > last_end and CHECK_CALL.match(line)][:1]
            what = "moved the check out of the exercise cell"
        elif cell["cell_type"] == "code":
            starts = [k for k, line in enumerate(lines) if CHECK_CALL.match(line)][1:]
            what = "gave each check a cell of its own"
        if starts:
            first, *rest = _split_lines(src, starts)
            cell["source"] = first
            new = [_code_cell(nb, cell, part) for part in rest]
            nb["cells"][i + 1:i + 1] = new
            changes.append(f"cell {i}: {what} ({len(new)} new cell(s))")
            i += len(new)
        i += 1
    return changes


# ---------------------------------------------------------------- finding the exercises


def find_exercises(nb: dict) -> list[GradedExercise]:
    """The exercises of a notebook (parsed JSON) whose checks sit in cells of their own.

    Raises ``ValueError`` naming the cell when the pattern is broken: an exercise cell with no
    "✏️ Exercise N" heading above it, unbalanced markers, a solution marker in a markdown cell,
    or two exercises with the same grade_id.
    """
    cells, found, seen = nb["cells"], [], {}
    for i, cell in enumerate(cells):
        src = _source(cell)
        if cell["cell_type"] != "code" and BEGIN in src:
            raise ValueError(f"cell {i} is {cell['cell_type']} but holds {BEGIN!r}: nbgrader "
                             "would take it for a solution. Reword it (solutions live in code "
                             "cells).")
        if not _is_exercise(cell):
            continue
        if src.count(BEGIN) != src.count(END):
            raise ValueError(f"cell {i}: unbalanced {BEGIN!r} / {END!r} markers.")
        numbers = [int(m[1]) for c in cells[:i] if c["cell_type"] == "markdown"
                   for m in _HEADING.finditer(_source(c))]
        if not numbers:
            raise ValueError(f"cell {i} is an exercise (it holds {BEGIN!r}) but no markdown cell "
                             "above it says '✏️ Exercise N': add the heading, so that its "
                             "grade_id can carry the exercise's number.")
        checks, names = [], []
        for j in range(i + 1, len(cells)):
            if cells[j]["cell_type"] != "code" and not checks:
                continue  # prose between the exercise and its check
            got = checks_in(cells[j])
            if not got:
                break
            checks.append(j)
            names.append(got[0])
        defined = _DEFINES.findall(src)
        if not names and not defined:
            raise ValueError(f"cell {i} is an exercise but defines no function or class and no "
                             "check follows it: nothing to name its grade_id after.")
        ex = GradedExercise(numbers[-1], i, tuple(checks), tuple(names),
                            names[0] if names else defined[0])
        for gid in [ex.grade_id, *ex.check_ids()]:
            if gid in seen:
                raise ValueError(f"cells {seen[gid]} and {i} would share the grade_id {gid!r}: "
                                 "number the exercises apart or check different functions.")
            seen[gid] = i
        found.append(ex)
    return found


def grade_cells(nb: dict) -> dict[int, dict]:
    """The nbgrader metadata each cell of a notebook should carry, by cell index."""
    want = {}
    for ex in find_exercises(nb):
        want[ex.solution] = solution_metadata(ex.grade_id)
        for j, gid in zip(ex.checks, ex.check_ids()):
            want[j] = check_metadata(gid)
    return want


# ---------------------------------------------------------------- stamping


def stamp(nb: dict) -> tuple[dict, list[str]]:
    """A copy of the notebook with nbgrader's metadata on its exercise and check cells, and the
    list of changes made (empty when the notebook was stamped already)."""
    nb = copy.deepcopy(nb)
    changes = _split_cells(nb)
    want = grade_cells(nb)
    for i, cell in enumerate(nb["cells"]):
        meta = cell.setdefault("metadata", {})
        have = meta.get("nbgrader")
        if i in want and have != want[i]:
            kind = "exercise" if want[i]["solution"] else "check"
            what = "updated" if have else "marked"
            changes.append(f"cell {i}: {what} the {kind} cell {want[i]['grade_id']}")
            meta["nbgrader"] = want[i]
        elif i not in want and have is not None:
            changes.append(f"cell {i}: removed stale nbgrader metadata "
                           f"({have.get('grade_id', 'no grade_id')})")
            del meta["nbgrader"]
    return nb, changes


def read_notebook(path: Path) -> dict:
    """A notebook file as parsed JSON; a clear error when it is not one."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable notebook ({err})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError(f"{path}: not a notebook (no list of cells)")
    return nb


def write_notebook(nb: dict, path: Path) -> None:
    """Write a notebook with nbformat, as JupyterLab does (a new cell gets the same layout)."""
    import nbformat  # installed with Jupyter; course_lib itself does not need it

    text = nbformat.writes(nbformat.from_dict(nb))
    Path(path).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def stamp_problems(path: Path) -> list[str]:
    """What stamping would change in the notebook at ``path`` (empty when up to date)."""
    try:
        return [f"{path}: {c}" for c in stamp(read_notebook(path))[1]]
    except ValueError as err:
        return [f"{path}: {err}"]


def course_notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """The course's notebooks, ``NN_name.ipynb``, in order."""
    return sorted(p for p in Path(folder).glob("*.ipynb") if re.match(r"\d\d[a-z]?_", p.name))


# ---------------------------------------------------------------- an nbgrader course folder

CONFIG = '''\
# nbgrader's configuration for this course, written by `python -m course_lib.grading course`.
# Run nbgrader from this folder: `nbgrader generate_assignment 01_background`, ...
import os

from course_lib.grading import configure_nbgrader

c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "llm-course"

# Grade in smoke mode: the checks are the same in both modes, smoke mode only shrinks the
# training runs in between. Delete this line to grade in full mode (many times slower).
os.environ.setdefault("COURSE_FAST", "1")

# Release copies like `make student`'s (the course's stub; unfinished exercises and their checks
# tagged raises-exception, so Run All carries on); a per-cell time limit that fits the notebooks.
configure_nbgrader(c)
'''


def _tag_unfinished():
    """The nbconvert preprocessor that tags solution and test cells ``raises-exception``."""
    from nbconvert.preprocessors import Preprocessor  # only where nbgrader runs
    from traitlets import Bool

    class TagUnfinished(Preprocessor):
        """Tag every nbgrader solution cell and autograded test cell ``raises-exception``, so
        that Run All (JupyterLab, nbclient, nbval) carries on past an unfinished exercise."""

        enabled = Bool(True).tag(config=True)

        def preprocess_cell(self, cell, resources, index):
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution") or meta.get("grade"):
                tags = cell.metadata.setdefault("tags", [])
                if TAG not in tags:
                    tags.append(TAG)
            return cell, resources

    return TagUnfinished


def configure_nbgrader(c, cell_timeout: int = 900) -> None:
    """Set the course's options on an nbgrader config object ``c`` (see :data:`CONFIG`)."""
    from nbgrader.converters import GenerateAssignment

    defaults = list(GenerateAssignment.class_traits()["preprocessors"].default())
    c.GenerateAssignment.preprocessors = defaults + [_tag_unfinished()]
    c.ClearSolutions.code_stub = {"python": f"# YOUR CODE HERE\n{STUB}"}
    c.Execute.timeout = cell_timeout  # seconds per cell (nbgrader's default, 30, is too short)


def write_course(dest: Path, notebooks: list[Path] | None = None) -> list[str]:
    """Make (or update) an nbgrader course folder: ``dest/nbgrader_config.py`` (kept when it
    exists, so an instructor's edits survive) and ``dest/source/<stem>/<stem>.ipynb``, stamped,
    for each notebook. Returns the assignment names."""
    notebooks = course_notebooks() if notebooks is None else [Path(p) for p in notebooks]
    if not notebooks:
        raise ValueError("no notebooks to put in the course (expected NN_name.ipynb files)")
    stamped = {path: stamp(read_notebook(path))[0] for path in notebooks}  # all, before writing
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = dest / "nbgrader_config.py"
    if not config.exists():
        config.write_text(CONFIG, encoding="utf-8")
    for path, nb in stamped.items():
        folder = dest / "source" / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        write_notebook(nb, folder / path.name)
    return [path.stem for path in stamped]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m course_lib.grading",
        description="Make an nbgrader course folder from the course's notebooks.")
    sub = p.add_subparsers(dest="command", required=True)
    course = sub.add_parser("course", help="write nbgrader_config.py and source/<assignment>/")
    course.add_argument("dest", type=Path, help="the course folder (created if missing)")
    course.add_argument("notebooks", type=Path, nargs="*",
                        help="notebooks to include (default: every notebook in notebooks/)")
    args = p.parse_args(argv)
    try:
        names = write_course(args.dest, args.notebooks or None)
    except ValueError as err:
        p.exit(2, f"error: {err}\n")
    print(f"{args.dest}: {len(names)} assignment(s) in source/: {', '.join(names)}")
    print(f"Next: cd {args.dest} && nbgrader generate_assignment {names[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
