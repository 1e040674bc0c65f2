"""Score a folder of submitted notebooks on a laptop: no JupyterHub, no nbgrader database.

    python -m course_lib.grade SUBMISSIONS --out grades.csv       # what `make grade` runs

SUBMISSIONS holds one folder per student, named after the student, with the notebooks they
handed in under their course names::

    SUBMISSIONS/ada/01_background.ipynb
    SUBMISSIONS/ada/02_data_and_tokens.ipynb
    SUBMISSIONS/grace/01_background.ipynb

(deeper folders are fine, e.g. nbgrader's ``submitted/<student>/<assignment>/``: the first
folder names the student). Each notebook is run top to bottom in a fresh kernel, in smoke mode
(``COURSE_FAST=1``: the checks are the same, the training runs in between are tiny), after its
check cells have been restored from the course's own notebook, so an edited check grades
nothing. Each check cell then scores as nbgrader scores it: full points when it ran without an
error, 0 otherwise, and the error's message is the hint the learner saw (nbgrader also gives 0
to a cell that writes to stderr; the checks write nothing there).

Writes ``grades.csv`` (student, notebook, exercise, points, max_points, status, hint; status is
``right``, ``wrong``, ``not done``, ``missing`` or ``error``) and ``grades-summary.md``, per
exercise the number right and the most common mistakes, grouped by the checks' declared
mistakes. The summary names no student, so it can be projected in class.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from course_lib import grading

COLUMNS = ("student", "notebook", "exercise", "points", "max_points", "status", "hint")
NOT_DONE = "exercise not done yet"


@dataclass(frozen=True)
class Row:
    """One exercise of one student's notebook."""

    student: str
    notebook: str
    exercise: str
    points: float
    max_points: float
    status: str
    hint: str = ""


@dataclass(frozen=True)
class Check:
    """A check cell of a course notebook: its grade_id, source and points."""

    grade_id: str
    source: str
    points: float

    @property
    def exercise(self) -> str:
        return self.grade_id.removesuffix("_check")


class SubmissionError(ValueError):
    """The submissions folder is laid out in a way the grader cannot read."""


# ---------------------------------------------------------------- the course's check cells


def course_checks(path: Path) -> list[Check]:
    """The check cells of a course notebook, in order (stamped in memory, so this works before
    the notebook file itself is stamped)."""
    nb, _ = grading.stamp(grading.read_notebook(path))
    out = []
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution"):
            out.append(Check(meta["grade_id"], grading._source(cell), float(meta["points"])))
    return out


# ---------------------------------------------------------------- finding the submissions


def find_submissions(folder: Path, known: set[str]) -> list[tuple[str, Path]]:
    """``(student, path)`` for every notebook under ``folder``, checked against the course's
    notebook names ``known`` (stems). Raises :class:`SubmissionError` listing every problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SubmissionError(f"{folder} is not a folder. Give the folder that holds one folder "
                              "per student: SUBMISSIONS/<student>/<notebook>.ipynb.")
    found, problems = [], []
    for path in sorted(folder.rglob("*.ipynb")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue  # .ipynb_checkpoints and other hidden copies
        if len(rel.parts) == 1:
            problems.append(f"{rel}: not in a student's folder. Put it in "
                            f"{folder}/<student>/{path.name}.")
        elif path.stem not in known:
            problems.append(f"{rel}: the course has no notebook {path.name!r}. Rename it to its "
                            f"course name: {', '.join(sorted(known))}.")
        else:
            found.append((rel.parts[0], path))
    students = Counter((s, p.stem) for s, p in found)
    problems += [f"{s}: {n} copies of {stem}.ipynb; keep one." for (s, stem), n in
                 students.items() if n > 1]
    if problems:
        raise SubmissionError("cannot grade this folder:\n  " + "\n  ".join(problems))
    if not found:
        raise SubmissionError(f"{folder} holds no notebooks. Expected "
                              f"{folder}/<student>/<notebook>.ipynb, e.g. "
                              f"{folder}/ada/{sorted(known)[0]}.ipynb.")
    return found


# ---------------------------------------------------------------- grading one notebook


def _restore_checks(nb: dict, checks: list[Check]) -> dict[str, int | None]:
    """Put the course's source into each check cell of a submission (found by grade_id, else
    by its source); returns each check's cell index, None when the cell is gone."""
    where: dict[str, int | None] = {}
    for check in checks:
        where[check.grade_id] = None
        for i, cell in enumerate(nb["cells"]):
            meta = cell.get("metadata", {}).get("nbgrader", {})
            same = (meta.get("grade_id") == check.grade_id
                    or grading._source(cell).strip() == check.source.strip())
            if cell.get("cell_type") == "code" and same and i not in where.values():
                cell["source"] = check.source
                where[check.grade_id] = i
                break
    return where


def _kernel_manager():
    """A kernel manager that runs this Python (the course's environment), whatever kernels
    are installed elsewhere."""
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client import AsyncKernelManager  # nbclient's own (a blocking one hangs on
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # a cell's timeout)

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())

    return AsyncKernelManager(kernel_spec_manager=ThisPython(), kernel_name="python3")


def _execute(nb, timeout: int, full: bool) -> tuple[dict, dict[int, dict], str]:
    """Run every cell (errors do not stop the run); returns the executed notebook, each cell's
    error (ename, evalue) by index, and a message when the run broke off."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    errors: dict[int, dict] = {}

    def on_cell_executed(cell, cell_index, execute_reply):
        content = execute_reply["content"]
        if content.get("status") == "error":
            errors[cell_index] = {"ename": content.get("ename", ""),
                                  "evalue": content.get("evalue", "")}

    timeout_error = {"ename": "CellTimeoutError", "evalue": "", "traceback": []}
    env = dict(os.environ, MPLBACKEND="Agg")
    if not full:
        env["COURSE_FAST"] = "1"
    client = NotebookClient(nb, km=_kernel_manager(), timeout=timeout, allow_errors=True,
                            interrupt_on_timeout=True, error_on_timeout=timeout_error,
                            on_cell_executed=on_cell_executed)
    broke = ""
    with tempfile.TemporaryDirectory(prefix="grade-") as cwd:  # files a notebook writes
        try:
            # the kernel's own log (not the cells' output) would only clutter the terminal
            client.execute(cwd=cwd, env=env, stderr=subprocess.DEVNULL)
        except DeadKernelError as err:
            broke = f"the kernel died while running the notebook ({err}): out of memory?"
        except Exception as err:  # noqa: BLE001 - a broken run grades 0, never stops the class
            broke = f"the notebook could not run: {type(err).__name__}: {err}"
    return nb, errors, broke


def _hint(error: dict, timeout: int) -> tuple[str, str]:
    """(status, hint) of a check cell that raised."""
    if error["ename"] == "CellTimeoutError":
        return "error", f"the cell ran longer than {timeout} s (an endless loop?)"
    if error["ename"] == "AssertionError":
        status = "not done" if NOT_DONE in error["evalue"].split("\n")[0] else "wrong"
        return status, error["evalue"]
    # NameError: the exercise cell did not run or was renamed; anything else: a crash
    return "error", f"{error['ename']}: {error['evalue']}"


def grade_notebook(student: str, path: Path, course_notebook: Path, *, timeout: int = 900,
                   full: bool = False, executed_dir: Path | None = None) -> list[Row]:
    """Grade one submitted notebook against its course notebook: one :class:`Row` per check."""
    checks = course_checks(course_notebook)
    name = course_notebook.stem

    import nbformat

    try:
        nb = nbformat.reads(Path(path).read_text(encoding="utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 - corrupt JSON, or JSON that is not a notebook
        hint = (f"not a readable notebook ({str(err).splitlines()[0]}): ask the student for "
                "the file again.")
        return [Row(student, name, c.exercise, 0.0, c.points, "error", hint) for c in checks]
    for cell in nb["cells"]:  # a fresh run: no stale outputs
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    where = _restore_checks(nb, checks)
    executed, errors, broke = _execute(nb, timeout, full)
    if executed_dir is not None:
        out = Path(executed_dir) / student / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(executed, out)
    out_rows = []
    for c in checks:
        i = where[c.grade_id]
        if i is None:
            status, hint = "missing", ("the check cell was deleted: restore it from a fresh "
                                       "student copy")
        elif i in errors:
            status, hint = _hint(errors[i], timeout)
        elif broke or executed.cells[i].get("execution_count") is None:
            status, hint = "error", broke or "the check cell did not run"
        else:
            status, hint = "right", ""
        points = c.points if status == "right" else 0.0
        out_rows.append(Row(student, name, c.exercise, points, c.points, status, hint))
    return out_rows


def _grade_job(job) -> list[Row]:
    student, path, course_nb, timeout, full, executed_dir = job
    return grade_notebook(student, path, course_nb, timeout=timeout, full=full,
                          executed_dir=executed_dir)


def grade_folder(submissions: Path, notebooks: Path = grading.NOTEBOOKS, *, timeout: int = 900,
                 full: bool = False, jobs: int = 1, executed_dir: Path | None = None,
                 log=print) -> list[Row]:
    """Grade every notebook under ``submissions`` (see the module's docstring for the layout)."""
    course = {p.stem: p for p in grading.course_notebooks(notebooks)}
    if not course:
        raise SubmissionError(f"{notebooks} holds no course notebooks (NN_name.ipynb).")
    found = find_submissions(submissions, set(course))
    jobs_ = [(s, p, course[p.stem], timeout, full, executed_dir) for s, p in found]
    log(f"grading {len(found)} notebook(s) of {len({s for s, _ in found})} student(s)"
        f"{' in full mode' if full else ' in smoke mode (COURSE_FAST=1)'}...")
    rows: list[Row] = []
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_grade_job, jobs_))
    else:
        results = [_grade_job(j) for j in jobs_]
    for (student, path), got in zip(found, results):
        score = sum(r.points for r in got)
        log(f"  {student}/{path.name}: {score:g} of {sum(r.max_points for r in got):g}")
        rows += got
    return rows


# ---------------------------------------------------------------- the reports


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([f.name for f in fields(Row)])
        for r in rows:  # points as 1 and 0.5, not 1.0
            w.writerow([f"{v:g}" if isinstance(v, float) else v for v in astuple(r)])


def read_csv(path: Path) -> list[Row]:
    with open(path, newline="", encoding="utf-8") as f:
        return [Row(r["student"], r["notebook"], r["exercise"], float(r["points"]),
                    float(r["max_points"]), r["status"], r["hint"]) for r in csv.DictReader(f)]


def mistake(row: Row) -> str:
    """The mistake a row's hint names. For a wrong answer, the check's declared hint when one
    matches (so one mistake made on different inputs counts once), else the hint's first line
    without the exercise's name."""
    first = row.hint.split("\n")[0]
    if row.status != "wrong":
        return first
    from course_lib import checks  # the declared mistakes

    body = re.sub(r"^\w+: ", "", first)
    name = row.exercise.split("_", 1)[-1]  # ex3_merge -> merge
    declared = getattr(getattr(checks, f"check_{name}", None), "exercise", None)
    for m in [*getattr(declared, "mistakes", ()), *getattr(declared, "properties", ())]:
        hint = m.hint.split("\n")[0]
        if body.startswith(hint[:60]):
            return hint
    return body


def _cell(text: str, limit: int = 110) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(rows: list[Row], top: int = 3) -> str:
    """A Markdown report per notebook and exercise: how many got it right, how many did not
    finish, and the most common mistakes. It names no student."""
    students = sorted({r.student for r in rows})
    lines = [f"# Grades: {len(students)} student(s)", ""]
    for nb in sorted({r.notebook for r in rows}):
        mine = [r for r in rows if r.notebook == nb]
        n = len({r.student for r in mine})
        lines += [f"## {nb} ({n} submission(s))", "",
                  "| exercise | right | not done | wrong or error | most common mistakes |",
                  "| --- | --- | --- | --- | --- |"]
        for ex in dict.fromkeys(r.exercise for r in mine):  # notebook order
            got = [r for r in mine if r.exercise == ex]
            count = Counter(r.status for r in got)
            bad = Counter(mistake(r) for r in got if r.status in ("wrong", "error", "missing"))
            common = "; ".join(f"{_cell(m)} ({k})" for m, k in bad.most_common(top))
            lines.append(f"| {ex} | {count['right']}/{len(got)} | {count['not done']} | "
                         f"{len(got) - count['right'] - count['not done']} | {common} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.grade", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("submissions", type=Path, help="SUBMISSIONS/<student>/<notebook>.ipynb")
    p.add_argument("--out", type=Path, default=Path("grades.csv"), help="the CSV to write")
    p.add_argument("--summary", type=Path, default=None,
                   help="the per-exercise summary (default: next to --out, -summary.md)")
    p.add_argument("--notebooks", type=Path, default=grading.NOTEBOOKS,
                   help="the course's notebooks (default: this checkout's notebooks/)")
    p.add_argument("--executed", type=Path, default=None,
                   help="also save each executed notebook here (<student>/<notebook>.ipynb), "
                        "with the hints in place, to hand back as feedback")
    p.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (one per core)")
    p.add_argument("--full", action="store_true", help="run in full mode (much slower)")
    args = p.parse_args(argv)
    try:
        rows = grade_folder(args.submissions, args.notebooks, timeout=args.timeout,
                            full=args.full, jobs=args.jobs, executed_dir=args.executed)
    except SubmissionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_csv(rows, args.out)
    report = summary(rows)
    summary_path = args.summary or args.out.with_name(args.out.stem + "-summary.md")
    summary_path.write_text(report + "\n", encoding="utf-8")
    print("\n" + report)
    print(f"wrote {args.out} ({len(rows)} rows) and {summary_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
