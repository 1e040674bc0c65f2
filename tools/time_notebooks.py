"""Run every notebook top to bottom and record how long it takes, in full and smoke mode.

Writes the measured times into the table between the TIMINGS markers of notebooks/README.md
(and prints it), so the instructor guide never quotes an estimate.

    python tools/time_notebooks.py                 # both modes, every notebook
    python tools/time_notebooks.py --modes smoke   # quicker
    python tools/time_notebooks.py 01_background   # one notebook
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
TIMES = NOTEBOOKS / "timings.json"
BEGIN, END = "<!-- TIMINGS:BEGIN -->", "<!-- TIMINGS:END -->"


def run(nb: Path, smoke: bool) -> float:
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("COURSE_FAST", None)
    if smoke:
        env["COURSE_FAST"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
             "--ExecutePreprocessor.timeout=1800", "--output-dir", tmp, str(nb)],
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("names", nargs="*", help="notebook names (default: all)")
    p.add_argument("--modes", default="full,smoke")
    args = p.parse_args()
    modes = args.modes.split(",")
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {"notebooks": {}}
    paths = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if args.names:
        paths = [q for q in paths if any(q.stem.startswith(n) for n in args.names)]
    for nb in paths:
        for mode in modes:
            sec = run(nb, smoke=mode == "smoke")
            times["notebooks"].setdefault(nb.stem, {})[mode] = round(sec, 1)
            print(f"{nb.stem:28s} {mode:5s} {fmt(sec)}", flush=True)
    times["date"] = date.today().isoformat()
    times["machine"] = f"{cpu_name()}, {os.cpu_count()} cores"
    TIMES.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")
    text = table(times)
    if GUIDE.exists():
        guide = GUIDE.read_text()
        if BEGIN in guide and END in guide:
            guide = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
                           lambda _: f"{BEGIN}\n{text}\n{END}", guide, flags=re.DOTALL)
            GUIDE.write_text(guide)
    print(text)


if __name__ == "__main__":
    main()
