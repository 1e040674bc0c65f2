"""The notebooks as files: stored clean, Colab badge and setup cell in step, the nbval guard."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parent.parent


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_colab = _load_tool("sync_colab")
check_notebooks = _load_tool("check_notebooks")
NOTEBOOKS = sync_colab.course_notebooks()
URL = sync_colab.repository_url()


# ---- the course's notebooks ----------------------------------------------------------------


def test_notebooks_are_stored_without_outputs():
    found = [msg for p in check_notebooks.notebook_paths() for msg in check_notebooks.problems(p)]
    assert not found, "\n".join(found + ["Clean them with: nbstripout notebooks/*.ipynb"])


MAX_CELL_LINES = 25


def test_code_cells_are_short_enough_to_follow():
    """Compute, plot and check go in separate cells of at most MAX_CELL_LINES lines."""
    long = []
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            n = len(cell.source.splitlines())
            if cell.cell_type == "code" and n > MAX_CELL_LINES:
                long.append(f"{path.name} cell {i} (id {cell.get('id')}): {n} lines")
    assert not long, "split these cells:\n" + "\n".join(long)


def test_notebooks_have_badge_and_setup_cell_in_step():
    out_of_step = {}
    for path in NOTEBOOKS:
        _, changes = sync_colab.synced(nbformat.read(path, as_version=4), path.name, URL)
        if changes:
            out_of_step[path.name] = changes
    assert not out_of_step, f"{out_of_step}\nFix with: python tools/sync_colab.py"


def test_every_notebook_is_named_nn_name():
    names = [p.name for p in (ROOT / "notebooks").glob("*.ipynb")]
    assert all(sync_colab.NOTEBOOK_NAME.match(n) for n in names), names


# ---- sync_colab on made-up notebooks --------------------------------------------------------


def test_badge_url_and_install_line():
    assert sync_colab.github_slug("https://github.com/a-b/c.d") == "a-b/c.d"
    badge = sync_colab.badge_line("https://github.com/own/rep", "03_x.ipynb")
    assert (
        "](https://colab.research.google.com/github/own/rep/blob/main/notebooks/03_x.ipynb)"
        in badge
    )
    assert badge.startswith("[![Open In Colab](")
    assert '"course_lib @ git+https://github.com/own/rep"' in sync_colab.setup_source(
        "https://github.com/own/rep"
    )
    with pytest.raises(ValueError):
        sync_colab.github_slug("https://gitlab.com/own/rep")


def test_sync_keeps_title_and_other_cells(tmp_path):
    nb = new_notebook(
        cells=[
            new_markdown_cell("# 07 Scale\n\nWhat you will learn."),
            new_markdown_cell("Some prose."),
            new_code_cell("x = 1"),
            new_code_cell(
                "print(x)", outputs=[new_output("stream", text="1\n")], execution_count=3
            ),
        ]
    )
    path = tmp_path / "07_scale.ipynb"
    nbformat.write(nb, path)

    assert sync_colab.main(["--check", str(path)]) == 1
    assert nbformat.read(path, as_version=4) == nb, "--check must not change the file"
    assert sync_colab.main([str(path)]) == 0
    assert sync_colab.main(["--check", str(path)]) == 0

    out = nbformat.read(path, as_version=4)
    nbformat.validate(out)
    sources = [c.source for c in out.cells]
    assert sources[0].split("\n")[0] == sync_colab.badge_line(URL, path.name)
    assert sources[0].endswith("# 07 Scale\n\nWhat you will learn.")
    assert sources[1] == "Some prose."
    assert sources[2] == sync_colab.setup_source(URL)  # inserted before the first code cell
    assert sources[3:] == ["x = 1", "print(x)"]
    assert check_notebooks.problems(path) == []  # rewritten without outputs


def test_sync_updates_stale_badge_and_setup_cell(tmp_path):
    old = "https://github.com/old/place"
    nb = new_notebook(
        cells=[
            new_markdown_cell(sync_colab.badge_line(old, "01_a.ipynb") + "\n# Title"),
            new_code_cell(sync_colab.setup_source(old)),
            new_code_cell("y = 2"),
        ]
    )
    new, changes = sync_colab.synced(nb, "01_a.ipynb", URL)
    assert changes == ["updated the Colab badge", "updated the setup cell"]
    assert new.cells[0].source == sync_colab.badge_line(URL, "01_a.ipynb") + "\n# Title"
    assert new.cells[1].source == sync_colab.setup_source(URL)
    assert [c.source for c in new.cells[2:]] == ["y = 2"]
    assert len(new.cells) == 3
    assert sync_colab.synced(new, "01_a.ipynb", URL)[1] == []  # idempotent


def test_sync_lets_a_before_jax_cell_precede_the_setup_cell():
    """Notebook 08 sets the simulated device count in a cell that must run before JAX starts."""
    early = f"{sync_colab.PRE_SETUP_MARK} 8 CPU devices\nimport os"
    nb = new_notebook(cells=[new_markdown_cell(sync_colab.badge_line(URL, "07_s.ipynb")),
                             new_code_cell(early), new_code_cell("z = 3")])
    new, changes = sync_colab.synced(nb, "07_s.ipynb", URL)
    assert changes == ["inserted the setup cell"]
    assert [c.source for c in new.cells[1:]] == [early, sync_colab.setup_source(URL), "z = 3"]
    assert sync_colab.synced(new, "07_s.ipynb", URL)[1] == []  # idempotent


def test_sync_inserts_badge_cell_before_code(tmp_path):
    nb = new_notebook(cells=[new_code_cell("z = 3")])
    new, _ = sync_colab.synced(nb, "02_b.ipynb", URL)
    assert [c.cell_type for c in new.cells] == ["markdown", "code", "code"]
    assert new.cells[0].source == sync_colab.badge_line(URL, "02_b.ipynb")
    assert new.cells[2].source == "z = 3"


def test_check_notebooks_flags_outputs(tmp_path):
    nb = new_notebook(cells=[new_code_cell("1 + 1", execution_count=1)])
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, path)
    assert check_notebooks.problems(path) == [f"{path}: cell 0 is stored with an execution count"]
    assert check_notebooks.main([str(tmp_path)]) == 1
    (tmp_path / "broken.ipynb").write_text("{not json")
    assert "not a valid notebook" in check_notebooks.problems(tmp_path / "broken.ipynb")[0]


# ---- the nbval guard (root conftest.py) -----------------------------------------------------


def test_nbval_fails_on_usage_error_and_assert(tmp_path):
    """nbval alone lets `%notamagic` pass; the root conftest.py must fail it. A failing assert
    must fail too, and a clean notebook pass."""
    pytest.importorskip("nbval")
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    cells = {
        "usage": "%notamagic",
        "cellmagic": "%%notacellmagic\nprint(1)",
        "assertion": "assert 1 + 1 == 3, 'broken on purpose'",
        "clean": "%time x = 1\nprint('a UsageError mid-line is fine')",
    }
    for name, source in cells.items():
        nb = new_notebook(cells=[new_code_cell(source), new_code_cell("print('next')")])
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--nbval-current-env",
            "--nbval-cell-timeout=60",
            f"--junitxml={report}",
            "-q",
        ]
        + [f"{name}.ipynb" for name in cells],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    failed = {
        case.get("classname", "") + "::" + case.get("name", "")
        for case in ET.parse(report).iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    }
    failed_notebooks = sorted({name.split(".")[0] for name in failed})
    assert failed_notebooks == ["assertion", "cellmagic", "usage"], proc.stdout + proc.stderr
    assert len(failed) == 3, failed  # only the broken cell of each; 'next' cells still pass
    assert "IPython reported a UsageError" in proc.stdout


# ---- run times: one source (notebooks/timings.json) for every page ---------------------------

time_notebooks = _load_tool("time_notebooks")


def test_every_page_quotes_the_run_times_in_timings_json():
    """README's table, the instructor guide's table and each notebook's "**Time:**" line all
    carry the figures of notebooks/timings.json (rewrite them with
    `python tools/time_notebooks.py --write-only`)."""
    import json
    import re

    times = json.loads(time_notebooks.TIMES.read_text())
    readme = time_notebooks.README.read_text()
    guide = time_notebooks.GUIDE.read_text()
    assert time_notebooks.table(times) in guide
    stale = []
    for path in NOTEBOOKS:
        t = times["notebooks"].get(path.stem)
        assert t is not None, f"{path.stem} has no entry in timings.json: run tools/time_notebooks.py"
        full, smoke = time_notebooks.fmt(t["full"]), time_notebooks.fmt(t["smoke"])
        row = re.compile(time_notebooks.README_ROW.format(name=re.escape(path.stem)), re.MULTILINE)
        m = row.search(readme)
        if m is None or not m.group(0).endswith(f"| {full} | {smoke} |"):
            stale.append(f"README.md row of {path.stem}")
        first = "".join(nbformat.read(path, as_version=4).cells[0].source)
        m = time_notebooks.TIME_LINE.search(first)
        if m is None or f"**Time:** {full} to run" not in first:
            stale.append(f"{path.name}'s **Time:** line")
    assert not stale, f"{stale}: run python tools/time_notebooks.py --write-only"
