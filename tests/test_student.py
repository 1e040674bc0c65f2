"""Student copies: no solution leaks, stubs raise, exercise and check cells are tagged.

That every student copy also runs end to end is checked by `make test-student` (Run All in
JupyterLab in smoke mode, or nbval with SKIP_BROWSER=1), which `make test` runs.
"""

import json
from pathlib import Path

import pytest

from course_lib import student

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def src(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def solution_lines(source):
    """The code lines between the markers, without blanks and comments."""
    inside, lines = False, []
    for line in source.splitlines():
        if student.BEGIN in line:
            inside = True
        elif student.END in line:
            inside = False
        elif inside and line.strip() and not line.strip().startswith("#"):
            lines.append(line.strip())
    return lines


def test_strip_solutions_keeps_the_signature_and_indentation():
    code = (
        "def f(x):\n    \"\"\"doc\"\"\"\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n"
        "    ### END SOLUTION\n\n\nchecks.check_f(f)\n"
    )
    out = student.strip_solutions(code)
    assert "y = x + 1" not in out and "BEGIN" not in out
    assert "def f(x):\n    \"\"\"doc\"\"\"\n    # YOUR CODE HERE\n    raise NotImplementedError" in out
    assert out.endswith("checks.check_f(f)\n")
    ns = {}
    exec(out.replace("checks.check_f(f)\n", ""), ns)
    with pytest.raises(NotImplementedError):
        ns["f"](1)


def test_unbalanced_markers_are_an_error():
    with pytest.raises(ValueError, match="Unbalanced"):
        student.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def test_only_cells_that_call_a_check_are_tagged_after_an_exercise():
    def code(text):
        return {"cell_type": "code", "source": text, "metadata": {}, "outputs": [],
                "execution_count": None}

    exercise = code("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n")
    nb = {"cells": [exercise, {"cell_type": "markdown", "source": "Now check it.", "metadata": {}},
                    code("checks.check_f(f)\n"), code("checks.check_g(f)  # a second check\n"),
                    code("# checks.check_f is what graded it\nprint(f(2))\n")]}
    copy, n = student.student_notebook(nb)
    tagged = [student.TAG in c["metadata"].get("tags", []) for c in copy["cells"]]
    assert n == 1 and tagged == [True, False, True, True, False]
    assert [student.checks_in(c) for c in nb["cells"]] == [[], [], ["f"], ["g"], []]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_copy_has_no_solution_and_tags_the_exercises(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    copy, n = student.student_notebook(nb)
    assert n >= 3, f"{path.name} should have at least three exercises"
    assert len(copy["cells"]) == len(nb["cells"])
    for orig, new in zip(nb["cells"], copy["cells"]):
        s_orig, s_new = src(orig), src(new)
        if student.BEGIN not in s_orig:
            assert s_new == s_orig  # every other cell unchanged
            continue
        assert student.BEGIN not in s_new and student.END not in s_new
        assert "NotImplementedError" in s_new
        outside = set(line.strip() for line in s_new.splitlines())
        leaked = [line for line in solution_lines(s_orig)
                  if line in outside and line not in (s_orig.split(student.BEGIN)[0])]
        assert not leaked, f"solution lines left in {path.name}: {leaked}"
        assert student.TAG in new["metadata"]["tags"]
    tagged_checks = [c for c in copy["cells"] if "checks.check_" in src(c)
                     and student.TAG in c["metadata"].get("tags", [])]
    assert len(tagged_checks) >= n


def test_make_student_copies_writes_every_notebook(tmp_path):
    counts = student.make_student_copies(NOTEBOOKS[0].parent, tmp_path)
    assert sorted(counts) == [p.name for p in NOTEBOOKS]
    assert all(json.loads((tmp_path / name).read_text())["cells"] for name in counts)
