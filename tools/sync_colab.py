"""Keep every notebook's "Open in Colab" badge and setup cell in step with the repository URL.

    python tools/sync_colab.py            # rewrite notebooks/NN_*.ipynb where needed
    python tools/sync_colab.py --check    # exit 1, listing the notebooks out of step

The repository URL lives in ONE place: ``[project.urls] Repository`` in pyproject.toml. For each
``notebooks/NN_*.ipynb`` this script manages two things and leaves every other cell alone:
1. the first line of the first cell, a markdown cell: the "Open in Colab" badge (any text after
   the badge line, such as the title, is kept);
2. the first code cell: the standard setup cell below, which installs course_lib on Colab
   (code cells starting with ``# Before JAX starts:`` may come before it).
Rewritten notebooks are stored without outputs.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_NAME = re.compile(r"^\d\d[a-z]?_.+\.ipynb$")  # 05_train, 06a_generate_...
PRE_SETUP_MARK = "# Before JAX starts:"
BADGE_LINE = re.compile(r"^\s*\[!\[open in colab\]\(.*\)\]\(.*\)\s*$", re.IGNORECASE)

SETUP_TEMPLATE = """\
# Setup: works in JupyterLab and on Colab. On Colab, install course_lib from the course
# repository; pip keeps Colab's own JAX (upgrading it would break Colab's GPU support).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "course_lib @ git+<REPO_URL>"], check=True)

from course_lib import runtime

print(runtime.describe())"""


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The course repository's URL, from pyproject.toml ``[project.urls] Repository``."""
    with open(pyproject, "rb") as f:
        url = tomllib.load(f)["project"]["urls"]["Repository"]
    return url.rstrip("/").removesuffix(".git")


def github_slug(url: str) -> str:
    """'owner/repo' of a GitHub URL (Colab opens notebooks from GitHub only)."""
    m = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", url)
    if not m:
        raise ValueError(f"Repository URL {url!r} is not https://github.com/<owner>/<repo>.")
    return f"{m.group(1)}/{m.group(2)}"


def badge_line(url: str, filename: str) -> str:
    colab = f"https://colab.research.google.com/github/{github_slug(url)}/blob/main/notebooks/{filename}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab})"


def setup_source(url: str) -> str:
    return SETUP_TEMPLATE.replace("<REPO_URL>", url)


def _is_setup_cell(source: str) -> bool:
    return source.lstrip().startswith("# Setup:") or "google.colab" in source


def _is_pre_setup_cell(source: str) -> bool:
    """A code cell that must run before the setup cell starts JAX (notebook 08 sets the number
    of simulated CPU devices there); it starts with PRE_SETUP_MARK and may precede the setup."""
    return source.lstrip().startswith(PRE_SETUP_MARK)


def synced(nb, filename: str, url: str):
    """A copy of ``nb`` with the badge and setup cell in step, and the list of changes made."""
    nb = copy.deepcopy(nb)
    changes = []
    keep_ids = (nb.nbformat, nb.nbformat_minor) >= (4, 5)

    def new(cell):
        if not keep_ids:
            cell.pop("id", None)
        return cell

    badge = badge_line(url, filename)
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown":
        nb.cells.insert(0, new(new_markdown_cell(badge)))
        changes.append("inserted a markdown cell with the Colab badge")
    else:
        lines = first.source.split("\n")
        if BADGE_LINE.match(lines[0]):
            if lines[0] != badge:
                first.source = "\n".join([badge, *lines[1:]])
                changes.append("updated the Colab badge")
        else:
            first.source = badge + ("\n\n" + first.source if first.source.strip() else "")
            changes.append("added the Colab badge to the first cell")

    setup = setup_source(url)
    code_at = next((i for i, c in enumerate(nb.cells)
                    if c.cell_type == "code" and not _is_pre_setup_cell(c.source)), None)
    if code_at is not None and _is_setup_cell(nb.cells[code_at].source):
        if nb.cells[code_at].source != setup:
            nb.cells[code_at].source = setup
            changes.append("updated the setup cell")
    else:
        nb.cells.insert(1 if code_at is None else code_at, new(new_code_cell(setup)))
        changes.append("inserted the setup cell")
    return nb, changes


def strip_outputs(nb) -> bool:
    """Remove outputs and execution counts in place; True if there were any."""
    dirty = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            dirty |= bool(cell.get("outputs")) or cell.get("execution_count") is not None
            cell.outputs, cell.execution_count = [], None
    return dirty


def course_notebooks(folder: Path = ROOT / "notebooks") -> list[Path]:
    return sorted(p for p in folder.glob("*.ipynb") if NOTEBOOK_NAME.match(p.name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="report, change nothing")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    args = parser.parse_args(argv)

    url = repository_url()
    out_of_step = 0
    for path in args.notebooks or course_notebooks():
        nb = nbformat.read(path, as_version=4)
        new_nb, changes = synced(nb, path.name, url)
        if args.check:
            if changes:
                out_of_step += 1
                print(f"{path}: out of step: {'; '.join(changes)}")
            continue
        if strip_outputs(new_nb):
            changes.append("removed outputs")
        if changes:
            nbformat.write(new_nb, path)
            print(f"{path}: {'; '.join(changes)}")
    if out_of_step:
        print(f"{out_of_step} notebook(s) out of step. Fix with: python tools/sync_colab.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
