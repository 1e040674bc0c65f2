"""Run every notebook top to bottom and record how long it takes, in full and smoke mode.

notebooks/timings.json is the one source of these figures. From it the script rewrites the table
between the TIMINGS markers of notebooks/README.md, the two time columns of the notebook table in
README.md, and the "**Time:** ..." line at the top of each notebook, so no page quotes an estimate
or a figure another page contradicts. `--write-only` rewrites them from timings.json without running.

    python tools/time_notebooks.py                 # both modes, every notebook
    python tools/time_notebooks.py --modes smoke   # quicker
    python tools/time_notebooks.py 01_background   # one notebook
    python tools/time_notebooks.py --write-only    # only rewrite the pages from timings.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
GUIDE = NOTEBOOKS / "README.md"
README = ROOT / "README.md"
TIMES = NOTEBOOKS / "timings.json"
BEGIN, END = "<!-- TIMINGS:BEGIN -->", "<!-- TIMINGS:END -->"


def run(nb: Path, smoke: bool, keep: Path | None = None) -> float:
    """Seconds to execute ``nb``; with ``keep``, the executed copy (outputs and figures) is
    saved there as <name>.<mode>.ipynb, to read each figure the prose quotes against it."""
    env = dict(os.environ)
    env.pop("COURSE_FAST", None)
    if smoke:
        env["COURSE_FAST"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(keep) if keep is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        name = f"{nb.stem}.{'smoke' if smoke else 'full'}.ipynb"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
             "--ExecutePreprocessor.timeout=1800", "--output-dir", str(out), "--output", name,
             str(nb)],
            env=env, check=True, capture_output=True, text=True,
        )
        return time.perf_counter() - t0


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(times: dict) -> str:
    rows = ["| notebook | full mode (CPU) | smoke mode |", "| --- | --- | --- |"]
    for name in sorted(times["notebooks"]):
        t = times["notebooks"][name]
        rows.append(f"| `{name}` | {fmt(t.get('full'))} | {fmt(t.get('smoke'))} |")
    rows.append("")
    rows.append(f"Measured {times['date']} on {times['machine']} with "
                "`python tools/time_notebooks.py` (wall time of `jupyter nbconvert --execute`, "
                "kernel start included).")
    return "\n".join(rows)


# "**Time:** 3.6 min to run top to bottom ..." in a notebook's first cell: the figure is rewritten.
TIME_LINE = re.compile(r"(\*\*Time:\*\* )[0-9.]+ (?:s|min)( to run top to bottom)")
# "| [name](notebooks/name.ipynb) | what | full | smoke |" in README.md: the last two cells.
README_ROW = r"(\| \[{name}\]\(notebooks/{name}\.ipynb\) \|[^\n]*?\| )[^|\n]+ \| [^|\n]+ \|$"


def write_pages(times: dict) -> list[str]:
    """Rewrite every page that quotes a notebook's run time from ``times``; returns warnings
    for pages where the expected place was not found."""
    warnings = []
    text = table(times)
    guide = GUIDE.read_text()
    if BEGIN in guide and END in guide:
        guide = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
                       lambda _: f"{BEGIN}\n{text}\n{END}", guide, flags=re.DOTALL)
        GUIDE.write_text(guide)
    else:
        warnings.append(f"{GUIDE}: no TIMINGS markers")
    readme = README.read_text()
    for name, t in sorted(times["notebooks"].items()):
        row = re.compile(README_ROW.format(name=re.escape(name)), re.MULTILINE)
        cells = f"{fmt(t.get('full'))} | {fmt(t.get('smoke'))} |"
        readme, n = row.subn(lambda m, cells=cells: m.group(1) + cells, readme)
        if n != 1:
            warnings.append(f"README.md: no table row for {name}")
        path = NOTEBOOKS / f"{name}.ipynb"
        if not path.exists() or t.get("full") is None:
            continue
        nb = json.loads(path.read_text())
        first = "".join(nb["cells"][0]["source"])
        new, n = TIME_LINE.subn(lambda m, t=t: f"{m.group(1)}{fmt(t['full'])}{m.group(2)}", first)
        if n != 1:
            warnings.append(f"{path.name}: no '**Time:** <figure> to run top to bottom' line")
        elif new != first:
            nb["cells"][0]["source"] = new.splitlines(keepends=True)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    README.write_text(readme)
    return warnings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("names", nargs="*", help="notebook names (default: all)")
    p.add_argument("--modes", default="full,smoke")
    p.add_argument("--keep", type=Path, help="save the executed notebooks in this folder")
    p.add_argument("--write-only", action="store_true",
                   help="rewrite the pages from timings.json without running anything")
    args = p.parse_args()
    modes = args.modes.split(",")
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {"notebooks": {}}
    if args.write_only:
        for w in write_pages(times):
            print("warning:", w)
        return
    paths = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if args.names:
        paths = [q for q in paths if any(q.stem.startswith(n) for n in args.names)]
    for nb in paths:
        for mode in modes:
            sec = run(nb, smoke=mode == "smoke", keep=args.keep)
            times["notebooks"].setdefault(nb.stem, {})[mode] = round(sec, 1)
            print(f"{nb.stem:28s} {mode:5s} {fmt(sec)}", flush=True)
    times["date"] = date.today().isoformat()
    times["machine"] = f"{cpu_name()}, {os.cpu_count()} cores"
    TIMES.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")
    for w in write_pages(times):
        print("warning:", w)
    print(table(times))


if __name__ == "__main__":
    main()
