"""Grading: nbgrader's metadata on the exercises, nbgrader end to end, and the laptop grader.

The end-to-end tests run the guide's own commands (notebooks/README.md, "Grading") on three
simulated students: one right, one with typical mistakes (the hints the checks declare), one
who handed in the student copy untouched. To keep a kernel run to seconds, their notebook is
01_background cut to its setup, imports, exercises and checks; 01's full release copy runs once,
headless, to the end.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_lib import checks, grade, grading, student

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "notebooks" / "README.md"
NOTEBOOKS = grading.course_notebooks()
FIRST = ROOT / "notebooks" / "01_background.ipynb"
NAME = FIRST.stem
STUDENTS = {"ada": "right", "grace": "wrong", "alan": "unfinished"}


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def src(cell) -> str:
    return grading._source(cell)


def meta(cell) -> dict:
    return cell["metadata"].get("nbgrader", {})


def by_id(nb, grade_id: str) -> dict:
    return next(c for c in nb["cells"] if meta(c).get("grade_id") == grade_id)


# ---------------------------------------------------------------- stamping, on a made-up notebook


def made_up() -> dict:
    """The course's patterns: a check inside the exercise cell (as 01 had), a heading in bold,
    two checks in one cell (as 03's exercise 4), and stale metadata on a plain cell."""
    return json.loads(json.dumps(new_notebook(cells=[
        new_markdown_cell("# Title"),
        new_code_cell("from course_lib import checks"),
        new_markdown_cell("### ✏️ Exercise 1: add one"),
        new_code_cell("def add_one(x):\n    ### BEGIN SOLUTION\n    return x + 1\n"
                      "    ### END SOLUTION\n\n\nchecks.check_add_one(add_one)"),
        new_markdown_cell("✏️ **Exercise 2 — split and merge.** Write both."),
        new_code_cell("def split(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION"),
        new_code_cell("checks.check_split(split)\nchecks.check_merge(merge)\nprint('done')"),
        new_code_cell("x = 1", metadata={"nbgrader": {"grade": True, "grade_id": "old",
                                                      "points": 3, "solution": False,
                                                      "locked": True}}),
    ])))


def test_stamp_marks_exercise_and_check_cells_and_splits_checks():
    nb, changes = grading.stamp(made_up())
    assert [src(c) for c in nb["cells"][3:8]] == [
        "def add_one(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION",
        "checks.check_add_one(add_one)",  # moved out of the exercise cell
        "✏️ **Exercise 2 — split and merge.** Write both.",
        "def split(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION",
        "checks.check_split(split)",
    ]
    assert src(nb["cells"][8]) == "checks.check_merge(merge)\nprint('done')"
    assert meta(nb["cells"][3]) == grading.solution_metadata("ex1_add_one")
    assert meta(nb["cells"][4]) == grading.check_metadata("ex1_add_one_check", 1)
    assert meta(nb["cells"][6])["grade_id"] == "ex2_split"
    assert [meta(c)["grade_id"] for c in nb["cells"][7:9]] == ["ex2_split_check",
                                                               "ex2_merge_check"]
    assert meta(nb["cells"][4]) == {"grade": True, "grade_id": "ex1_add_one_check",
                                    "locked": True, "points": 1, "schema_version": 3,
                                    "solution": False, "task": False}
    assert "nbgrader" not in nb["cells"][9]["metadata"], "stale metadata must go"
    assert any("removed stale" in c for c in changes)
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[\w-]{1,64}", i) for i in ids)
    nbformat.validate(nbformat.from_dict(nb))
    again, more = grading.stamp(nb)
    assert more == [] and again == nb, "stamping twice must change nothing"


@pytest.mark.parametrize("cells, message", [
    ([new_code_cell("def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION")],
     "no markdown cell above it says '✏️ Exercise N'"),
    ([new_markdown_cell("✏️ Exercise 1"), new_code_cell("### BEGIN SOLUTION\nx = 1")],
     "unbalanced"),
    ([new_markdown_cell("Type ### BEGIN SOLUTION in your cell")], "nbgrader would take it"),
    ([new_markdown_cell("### ✏️ Exercise 1"),
      new_code_cell("def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION"),
      new_code_cell("def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION")],
     "would share the grade_id 'ex1_f'"),
])
def test_stamp_names_a_broken_pattern(cells, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        grading.stamp(json.loads(json.dumps(new_notebook(cells=cells))))


# ---------------------------------------------------------------- stamping the course's notebooks


def code_lines(nb) -> list[str]:
    return [line for c in nb["cells"] if c["cell_type"] == "code"
            for line in src(c).splitlines() if line.strip()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_stamps_into_graded_exercises(path):
    nb = grading.read_notebook(path)
    stamped, _ = grading.stamp(nb)
    assert code_lines(stamped) == code_lines(nb), "stamping may only split cells"
    assert grading.stamp(stamped)[1] == []
    exercises = grading.find_exercises(stamped)
    assert len(exercises) >= 3
    for ex in exercises:
        assert ex.checks, f"{ex.grade_id} has no check cell"
        for j, gid in zip(ex.checks, ex.check_ids()):
            assert meta(stamped["cells"][j]) == grading.check_metadata(gid, 1)
            assert len(grading.checks_in(stamped["cells"][j])) == 1


def test_the_course_notebooks_carry_nbgrader_metadata():
    """Fails while a notebook lacks the metadata or carries it stale (e.g. after an exercise
    was added or renumbered)."""
    found = [msg for p in NOTEBOOKS for msg in grading.stamp_problems(p)]
    assert not found, "\n".join(found[:20] + [f"Fix with: {grading.STAMP_COMMAND}"])


def test_the_guide_states_the_points_per_notebook():
    totals = [sum(ex.points for ex in grading.find_exercises(grading.stamp(
        grading.read_notebook(p))[0])) for p in NOTEBOOKS]
    text = " ".join(GUIDE.read_text(encoding="utf-8").split())
    assert f"a notebook is worth {min(totals)} to {max(totals)} points" in text, totals


def test_stamping_tool_and_check_notebooks(tmp_path, capsys):
    tool, check = _load_tool("nbgrader_cells"), _load_tool("check_notebooks")
    path = tmp_path / "01_made_up.ipynb"
    nbformat.write(nbformat.from_dict(made_up()), path)
    assert tool.main(["--check", str(path)]) == 1
    assert check.main([str(path)]) == 1
    assert f"Stamp nbgrader's metadata with: {grading.STAMP_COMMAND}" in capsys.readouterr().out
    assert tool.main([str(path)]) == 0
    stamped = path.read_bytes()
    assert tool.main([str(path)]) == 0 and path.read_bytes() == stamped, "idempotent"
    assert tool.main(["--check", str(path)]) == 0
    assert check.main([str(path)]) == 0
    copy, _ = student.student_notebook(json.loads(stamped))  # a student copy is not checked
    nbformat.write(nbformat.from_dict(copy), tmp_path / "student.ipynb")
    assert check.grading_problems(tmp_path / "student.ipynb") == []


# ---------------------------------------------------------------- simulated students


def exercises_only(nb: dict) -> dict:
    """A stamped notebook cut to its title, setup and import cells, exercise headings,
    exercises and checks: the course's patterns in a notebook that runs in seconds."""
    first = next(i for i, c in enumerate(nb["cells"]) if meta(c))
    keep = [c for i, c in enumerate(nb["cells"]) if i == 0 or meta(c)
            or (c["cell_type"] == "code" and i < first and "import" in src(c))
            or (c["cell_type"] == "markdown" and grading._HEADING.search(src(c)))]
    return dict(nb, cells=keep)


def solution(cell) -> str:
    """The code between a cell's solution markers, dedented."""
    lines = src(cell).split("\n")
    a = next(i for i, line in enumerate(lines) if student.BEGIN in line)
    b = next(i for i, line in enumerate(lines) if student.END in line)
    indent = len(lines[a]) - len(lines[a].lstrip())
    return "\n".join(line[indent:] for line in lines[a + 1:b])


def fill(nb: dict, grade_id: str, body: str) -> None:
    """Write ``body`` where a student copy's stub is, in the exercise cell ``grade_id``."""
    cell = by_id(nb, grade_id)
    stub = re.compile(r"^([ \t]*)# YOUR CODE HERE\n[ \t]*raise NotImplementedError\(.*\)$",
                      re.MULTILINE)
    m = stub.search(src(cell))
    assert m, f"no stub in {grade_id}"
    cell["source"] = src(cell)[:m.start()] + "\n".join(
        m[1] + line for line in body.split("\n")) + src(cell)[m.end():]


# Typical mistakes, each giving a hint the check declares (found by its first words).
WRONG = {
    "ex1_perplexity_from_logprobs": ("return jnp.exp(jnp.mean(logprobs))",
                                     "forgot the minus sign"),
    "ex3_sample_bigram": ("out, cur = [], start\nfor _ in range(n_steps):\n"
                          "    cur = int(jnp.argmax(probs[cur]))\n    out.append(cur)\n"
                          "return jnp.array(out, dtype=jnp.int32)",
                          "always picked the most likely token"),
    "ex4_cross_entropy_from_logits": ("logp = jax.nn.log_softmax(logits, axis=-1)\n"
                                      "return -logp[jnp.arange(targets.shape[0]), targets].sum()",
                                      "used the sum over positions"),
}


def declared(grade_id: str, start: str) -> str:
    """The hint that exercise ``grade_id``'s check declares for a mistake, by its first words."""
    ex = getattr(checks, "check_" + grade_id.split("_", 1)[1]).exercise
    hints = [m.hint for m in [*ex.mistakes, *ex.properties] if m.hint.startswith(start)]
    assert len(hints) == 1, (grade_id, start, hints)
    return hints[0]


def submissions(source: dict, release: dict) -> dict[str, dict]:
    """The three students' notebooks: all right (the solutions), typical mistakes on three of
    the four exercises (the fourth right), the student copy untouched."""
    wrong = json.loads(json.dumps(release))
    for gid, (body, _) in WRONG.items():
        fill(wrong, gid, body)
    fill(wrong, "ex2_normalize_bigram_counts", solution(by_id(source, "ex2_normalize_bigram_counts")))
    return {"ada": source, "grace": wrong, "alan": release}


EXERCISES = ["ex1_perplexity_from_logprobs", "ex2_normalize_bigram_counts", "ex3_sample_bigram",
             "ex4_cross_entropy_from_logits"]
EXPECTED_POINTS = {"ada": [1, 1, 1, 1], "grace": [0, 1, 0, 0], "alan": [0, 0, 0, 0]}


@pytest.fixture(scope="module")
def small_source() -> dict:
    return exercises_only(grading.stamp(grading.read_notebook(FIRST))[0])


def guide_block(marker: str) -> list[str]:
    """The command lines of the guide's bash block after ``<!-- grading:<marker>``."""
    text = GUIDE.read_text(encoding="utf-8")
    m = re.search(r"<!-- grading:" + marker + r"\b[^\n]*-->\n```bash\n(.*?)```", text, re.S)
    assert m, f"the guide lost its '{marker}' block"
    return [line for line in m[1].splitlines() if shlex.split(line, comments=True)]


def argv_of(line: str, home: Path) -> list[str]:
    """A guide line as argv for this interpreter (``python`` and ``nbgrader`` of the env)."""
    words = shlex.split(line.replace("~/", f"{home}/"), comments=True)
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    if words[0] == "nbgrader":
        return [sys.executable, "-m", "nbgrader", *words[1:]]
    return words


def run(argv, cwd, env=None, timeout=900):
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    print(f"{' '.join(map(str, argv[1:4]))}: {time.perf_counter() - t:.1f} s")
    return proc


def grading_env(monkeypatch=None) -> dict:
    """The environment the tools run in: this env's bin first (nbgrader calls `alembic`)."""
    import os

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if monkeypatch is not None:
        monkeypatch.setenv("PATH", path)
    return dict(os.environ, PATH=path, MPLBACKEND="Agg", COURSE_FAST="1")


def visible_text(path: Path) -> str:
    """The text of an HTML page as a reader sees it (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------- the laptop grader


@pytest.mark.classroom
def test_laptop_grader_scores_the_students_as_the_guide_says(tmp_path, small_source):
    course = tmp_path / "course"
    course.mkdir()
    nbformat.write(nbformat.from_dict(small_source), course / FIRST.name)
    release, _ = student.student_notebook(small_source)
    work = submissions(small_source, release)
    grace = work["grace"]
    by_id(grace, "ex1_perplexity_from_logprobs_check")["source"] = "pass  # edited"
    grace["cells"].remove(by_id(grace, "ex4_cross_entropy_from_logits_check"))
    for name, nb in work.items():
        (tmp_path / "submissions" / name).mkdir(parents=True)
        nbformat.write(nbformat.from_dict(nb), tmp_path / "submissions" / name / FIRST.name)

    [activate, command] = guide_block("laptop")
    assert activate.startswith("source .venv/bin/activate")
    run(argv_of(command, tmp_path) + ["--notebooks", str(course), "--executed", "executed",
                                      "--jobs", "2"], cwd=tmp_path, env=grading_env())

    rows = grade.read_csv(tmp_path / "grades.csv")
    with open(tmp_path / "grades.csv", newline="", encoding="utf-8") as f:
        assert tuple(next(csv.reader(f))) == grade.COLUMNS
    got = {(r.student, r.exercise): r for r in rows}
    exercises = [c.exercise for c in grade.course_checks(course / FIRST.name)]
    assert exercises == EXERCISES
    assert len(rows) == 3 * len(exercises)
    for name, points in EXPECTED_POINTS.items():
        assert [got[name, ex].points for ex in exercises] == points, name
        assert all(got[name, ex].notebook == NAME and got[name, ex].max_points == 1
                   for ex in exercises)
    assert all(got["ada", ex].status == "right" and got["ada", ex].hint == "" for ex in exercises)
    assert all(got["alan", ex].status == "not done" and grade.NOT_DONE in got["alan", ex].hint
               for ex in exercises)
    for gid in ("ex1_perplexity_from_logprobs", "ex3_sample_bigram"):  # ex1's edited check ran
        hint = declared(gid, WRONG[gid][1])
        assert got["grace", gid].status == "wrong", got["grace", gid]
        assert got["grace", gid].hint.startswith(f"{gid.split('_', 1)[1]}: {hint}")
    assert got["grace", "ex4_cross_entropy_from_logits"].status == "missing"

    summary = (tmp_path / "grades-summary.md").read_text(encoding="utf-8")
    first_line = declared("ex1_perplexity_from_logprobs", "forgot the minus sign")
    assert "| ex1_perplexity_from_logprobs | 1/3 | 1 | 1 | " in summary
    assert "| ex2_normalize_bigram_counts | 2/3 | 1 | 0 |  |" in summary
    assert grade._cell(first_line) + " (1)" in summary
    assert not any(name in summary for name in STUDENTS), "the summary must name no student"
    executed = nbformat.read(tmp_path / "executed" / "grace" / FIRST.name, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert any(first_line[:40] in o.evalue for o in errors)


def test_laptop_grader_names_what_is_wrong_with_the_folder(tmp_path, capsys):
    known = {"01_background", "02_data_and_tokens"}
    with pytest.raises(grade.SubmissionError, match="is not a folder"):
        grade.find_submissions(tmp_path / "nowhere", known)
    with pytest.raises(grade.SubmissionError, match="holds no notebooks"):
        grade.find_submissions(tmp_path, known)
    (tmp_path / "01_background.ipynb").write_text("{}")
    (tmp_path / "ada").mkdir()
    (tmp_path / "ada" / "01_background-Copy1.ipynb").write_text("{}")
    (tmp_path / "ada" / "notes.txt").write_text("ignored")
    (tmp_path / "grace" / "a").mkdir(parents=True)
    (tmp_path / "grace" / "01_background.ipynb").write_text("{}")
    (tmp_path / "grace" / "a" / "01_background.ipynb").write_text("{}")
    (tmp_path / "grace" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "grace" / ".ipynb_checkpoints" / "01_background.ipynb").write_text("{}")
    with pytest.raises(grade.SubmissionError) as err:
        grade.find_submissions(tmp_path, known)
    msg = str(err.value)
    assert "01_background.ipynb: not in a student's folder" in msg
    assert "the course has no notebook '01_background-Copy1.ipynb'" in msg
    assert "grace: 2 copies of 01_background.ipynb" in msg
    assert "checkpoints" not in msg and "notes.txt" not in msg
    assert grade.main([str(tmp_path), "--out", str(tmp_path / "g.csv")]) == 2
    assert "cannot grade this folder" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists(), "nothing is written when the folder is wrong"


def test_a_check_that_hangs_or_crashes_scores_zero_and_the_rest_still_runs(tmp_path):
    """A made-up course notebook whose `checks` come from a cell of its own (no JAX, so the
    kernel starts in a second): a check cell past its time limit is interrupted and scores 0,
    a renamed function is a NameError, and the cells after them still run."""
    def exercise(n, name):
        return [new_markdown_cell(f"### ✏️ Exercise {n}: {name}"),
                new_code_cell(f"def {name}(x):\n    ### BEGIN SOLUTION\n    return x\n"
                              "    ### END SOLUTION"),
                new_code_cell(f"checks.check_{name}({name})")]
    fake = ("import time\n\n\nclass checks:\n    def check_spin(f):\n        while True:\n"
            "            time.sleep(0.1)\n\n    def check_twice(f):\n        assert f(2) == 2\n\n"
            "    def check_echo(f):\n        assert f(1) == 1")
    course = new_notebook(cells=[new_code_cell(fake), *exercise(1, "spin"),
                                 *exercise(2, "twice"), *exercise(3, "echo")])
    (tmp_path / "course").mkdir()
    nbformat.write(course, tmp_path / "course" / "01_made_up.ipynb")
    handed_in, _ = student.student_notebook(grading.stamp(json.loads(nbformat.writes(course)))[0])
    fill(handed_in, "ex1_spin", "return x")
    fill(handed_in, "ex3_echo", "return x")  # ex2 renamed:
    by_id(handed_in, "ex2_twice")["source"] = "def double(x):\n    return x"
    nbformat.write(nbformat.from_dict(handed_in), tmp_path / "01_made_up.ipynb")
    rows = grade.grade_notebook("ada", tmp_path / "01_made_up.ipynb",
                                tmp_path / "course" / "01_made_up.ipynb", timeout=3)
    assert [(r.exercise, r.status, r.points) for r in rows] == [
        ("ex1_spin", "error", 0), ("ex2_twice", "error", 0), ("ex3_echo", "right", 1)]
    assert rows[0].hint == "the cell ran longer than 3 s (an endless loop?)"
    assert rows[1].hint == "NameError: name 'twice' is not defined"


@pytest.mark.parametrize("content", ["{not json", '{"cells": 1}', "\x00\x01"])
def test_a_corrupt_notebook_scores_zero_with_a_note(tmp_path, content):
    path = tmp_path / "01_background.ipynb"
    path.write_text(content)
    rows = grade.grade_notebook("ada", path, FIRST)
    assert len(rows) == 4 and {r.status for r in rows} == {"error"}
    assert all(r.points == 0 and "not a readable notebook" in r.hint for r in rows)


def test_the_summary_counts_a_mistake_once_whatever_its_inputs():
    hint = declared("ex1_perplexity_from_logprobs", "forgot the minus sign")
    rows = [grade.Row(s, NAME, "ex1_perplexity_from_logprobs", 0, 1, "wrong",
                      f"perplexity_from_logprobs: {hint}\n  called with ({k})")
            for k, s in enumerate(["a", "b", "c"])]
    rows += [grade.Row("d", NAME, "ex1_perplexity_from_logprobs", 1, 1, "right", ""),
             grade.Row("e", NAME, "ex1_perplexity_from_logprobs", 0, 1, "error",
                       "NameError: name 'perplexity_from_logprobs' is not defined")]
    text = grade.summary(rows)
    assert f"| ex1_perplexity_from_logprobs | 1/5 | 0 | 4 | {grade._cell(hint)} (3); " \
           "NameError: name 'perplexity_from_logprobs' is not defined (1) |" in text


# ---------------------------------------------------------------- nbgrader


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """An nbgrader course with every notebook, and nbgrader's release copy of each."""
    pytest.importorskip("nbgrader", reason="nbgrader is in the dev extra; `make env` has it")
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    course = tmp_path_factory.mktemp("course")
    names = grading.write_course(course)
    c = Config()
    c.CourseDirectory.root = str(course)
    grading.configure_nbgrader(c)
    mp = pytest.MonkeyPatch()
    grading_env(mp)
    try:
        api = NbGraderAPI(config=c)
        t = time.perf_counter()
        for name in names:
            result = api.generate_assignment(name)
            assert result["success"], f"{name}:\n{result.get('log')}\n{result.get('error')}"
        print(f"generate_assignment, {len(names)} notebooks: {time.perf_counter() - t:.1f} s")
    finally:
        mp.undo()
    return course, names


def test_nbgrader_accepts_every_notebook_and_releases_make_students_copy(released):
    course, names = released
    assert names == [p.stem for p in NOTEBOOKS]
    for name in names:
        source = grading.read_notebook(course / "source" / name / f"{name}.ipynb")
        release = grading.read_notebook(course / "release" / name / f"{name}.ipynb")
        copy, n = student.student_notebook(source)
        assert n >= 3
        assert [c.get("id") for c in release["cells"]] == [c.get("id") for c in copy["cells"]]
        for a, b in zip(release["cells"], copy["cells"]):
            assert src(a) == src(b), f"{name}: release and student copy differ:\n{src(a)}"
            assert a["metadata"].get("tags") == b["metadata"].get("tags"), (name, src(a))
            assert student.BEGIN not in src(a)
        stubs = [c for c in release["cells"] if meta(c).get("solution")]
        assert stubs and all(student.STUB in src(c) for c in stubs)


@pytest.mark.classroom
def test_the_release_copy_runs_headless_to_the_end(released):
    """Run All, as JupyterLab and nbval do: it stops at an error, except in cells tagged
    raises-exception. 01's release copy, smoke mode."""
    from nbclient import NotebookClient

    course, _ = released
    nb = nbformat.read(course / "release" / NAME / FIRST.name, as_version=4)
    t = time.perf_counter()
    NotebookClient(nb, km=grade._kernel_manager(), timeout=600).execute(
        cwd=str(course), env=grading_env())
    print(f"01's release copy, smoke mode: {time.perf_counter() - t:.1f} s")
    raised = [meta(c)["grade_id"] for c in nb.cells
              if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert raised == [f"{ex}_check" for ex in EXERCISES]  # "not done yet", and nothing else
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), "ran to the end"


@pytest.mark.classroom
def test_nbgrader_autogrades_the_students_as_the_guide_says(tmp_path, small_source):
    pytest.importorskip("nbgrader", reason="nbgrader is in the dev extra; `make env` has it")
    from nbgrader.api import Gradebook

    env, cwd, home = grading_env(), ROOT, tmp_path
    course = home / "llm-class"
    lines = guide_block("nbgrader")
    assert lines[0].startswith("source .venv/bin/activate")
    for line in lines[1:]:
        argv = argv_of(line, home)
        if argv[0] == "cd":
            cwd = Path(argv[1])
            continue
        if argv[2:4] == ["nbgrader", "autograde"]:  # the students hand their notebooks in
            release = grading.read_notebook(course / "release" / NAME / FIRST.name)
            for name, nb in submissions(small_source, release).items():
                folder = course / "submitted" / name / NAME
                folder.mkdir(parents=True)
                nbformat.write(nbformat.from_dict(nb), folder / FIRST.name)
        run(argv, cwd, env)
        if "course_lib.grading" in line:  # keep the run short: 01's exercises only
            nbformat.write(nbformat.from_dict(small_source),
                           course / "source" / NAME / FIRST.name)

    with open(course / "grades.csv", newline="") as f:  # nbgrader export
        totals = {r["student_id"]: float(r["raw_score"]) for r in csv.DictReader(f)}
    assert totals == {name: sum(p) for name, p in EXPECTED_POINTS.items()}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for name, points in EXPECTED_POINTS.items():
            graded = gb.find_submission_notebook(NAME, NAME, name)
            assert [(g.name, g.score, g.max_score) for g in graded.grades] == [
                (f"{ex}_check", p, 1.0) for ex, p in zip(EXERCISES, points)], name
    feedback = visible_text(course / "feedback" / "grace" / NAME / f"{NAME}.html")
    for gid, (_, start) in WRONG.items():
        assert declared(gid, start)[:80] in feedback, gid
    assert grade.NOT_DONE in visible_text(course / "feedback" / "alan" / NAME / f"{NAME}.html")


def test_make_targets_run_the_guides_commands():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "grade", "nbgrader-course", "SUBMISSIONS=subs",
                          "GRADES=g.csv", "COURSE=crs"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    assert "-m course_lib.grade subs --out g.csv" in out
    assert "-m course_lib.grading course crs" in out
    guide = " ".join(guide_block("laptop") + guide_block("nbgrader"))
    assert "make grade SUBMISSIONS=" in guide and "make nbgrader-course COURSE=" in guide
