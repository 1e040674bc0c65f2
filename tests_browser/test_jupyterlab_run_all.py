"""JupyterLab in a real browser: "Run All" on every notebook and on every student copy.

One test per notebook in notebooks/ (a new notebook is picked up by itself) and one per student
copy. Each opens the notebook in JupyterLab (127.0.0.1, token authentication) in Debian's
Chromium driven by Playwright (no browser download), runs all cells through JupyterLab's own Run
menu, in full mode (what a learner runs) or smoke mode (COURSE_FAST=1), saves the notebook from
the browser and reads it back. It
fails, naming the notebook and the cell, on any unexpected error output, on a mistyped %magic
(IPython prints a UsageError instead of raising one) and on any code cell that never ran.

Expected errors: JupyterLab's Run All carries on past a cell tagged ``raises-exception`` and stops
at any other error. In the course notebooks a tagged cell may raise anything (its author declared
the error). The student copies (``make student``) tag each stubbed exercise cell and the check
after it; those cells may fail only the way an unfinished exercise does, with the stub's
``NotImplementedError`` or the check's "exercise not done yet" message. Any other error there (a
``NameError`` from a renamed variable, a crash inside a check) is a real failure.

    make test-notebooks   # every notebook, full mode (BROWSER_KINDS=notebooks BROWSER_MODE=full)
    make test-student     # every student copy, smoke mode, as `make student` wrote them
    BROWSER_NOTEBOOKS='01_*' python -m pytest tests_browser     # one notebook and its copy

Environment: BROWSER_NOTEBOOKS_DIR (default notebooks/), BROWSER_NOTEBOOKS (a glob inside it,
default ``*.ipynb``), BROWSER_KINDS (``notebooks,student`` by default), BROWSER_MODE (``smoke``
by default, or ``full``), BROWSER_STUDENT_DIR (a folder of ready student copies; default: made
here with ``course_lib.student``), BROWSER_TIMEOUT (seconds per notebook, default 900 in smoke
mode and 2400 in full mode), CHROMIUM (the browser binary), SKIP_BROWSER=1 (skip).
Screenshots go to build/browser/<kind>/<notebook>.png; a failing run's notebook, with its
outputs, is saved beside its screenshot (every run's with BROWSER_KEEP=1). With pytest-xdist (``-n 2``) each worker runs its own
JupyterLab.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(os.environ.get("BROWSER_NOTEBOOKS_DIR") or ROOT / "notebooks").resolve()
SHOTS = ROOT / "build" / "browser"
PATTERN = os.environ.get("BROWSER_NOTEBOOKS", "*.ipynb")
KINDS = [k.strip() for k in os.environ.get("BROWSER_KINDS", "notebooks,student").split(",")
         if k.strip()]
MODE = os.environ.get("BROWSER_MODE", "smoke")
TIMEOUT = float(os.environ.get("BROWSER_TIMEOUT") or (2400 if MODE == "full" else 900))
TAG = "raises-exception"
# How an unfinished exercise fails in a student copy: the stub itself, or a check reporting it.
STUB_ERRORS = ("NotImplementedError",)
STUB_MESSAGE = "exercise not done yet"
CHROME_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")

if set(KINDS) - {"notebooks", "student"}:
    raise ValueError(f"BROWSER_KINDS={os.environ['BROWSER_KINDS']!r}: use 'notebooks', "
                     "'student' or 'notebooks,student'.")
if MODE not in ("full", "smoke"):
    raise ValueError(f"BROWSER_MODE={MODE!r}: use 'full' or 'smoke'.")


def _usage_errors():
    """The repository's UsageError detector (conftest.py at the root, shared with nbval)."""
    spec = importlib.util.spec_from_file_location("_root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.usage_errors


usage_errors = _usage_errors()


def _by_expected_time(paths: list[Path]) -> list[Path]:
    """Slowest first (times in notebooks/timings.json for this mode; unknown ones first of all),
    so two xdist workers finish at about the same time."""
    try:
        times = json.loads((NOTEBOOKS / "timings.json").read_text())["notebooks"]
    except (OSError, KeyError, ValueError):
        times = {}
    return sorted(paths, key=lambda p: -times.get(p.stem, {}).get(MODE, float("inf")))


CASES = [(kind, path.name) for path in _by_expected_time(sorted(NOTEBOOKS.glob(PATTERN)))
         for kind in KINDS]


def find_chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    pytest.fail(
        "No Chromium found for the JupyterLab browser test. Install it with\n"
        "    sudo apt-get install chromium        (Debian/Ubuntu)\n"
        "or point CHROMIUM at a Chrome/Chromium binary; SKIP_BROWSER=1 skips this test.",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab server: its URL, token, folder, and its REST API."""

    def __init__(self, url: str, token: str, root: Path):
        self.url, self.token, self.root = url, token, root

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def session(self, rel: str):
        """The kernel session of the notebook at ``rel`` (relative to the server's root)."""
        return next((s for s in self.api("sessions") if s.get("path") == rel), None)

    def kernel_state(self, rel: str) -> str:
        s = self.session(rel)
        return s["kernel"]["execution_state"] if s else "no session"

    def wait_for_idle_kernel(self, rel: str, page, timeout: float = 90) -> float:
        """Wait until the notebook's new kernel reports idle; return the seconds it took.

        A start takes seconds even on a loaded 2-core machine, but it can stall (two servers'
        kernels racing for a port, a page that never asked for a kernel). After ``timeout`` the
        kernel is restarted once through the REST API, or the page reloaded if it has no kernel
        session; a second failure fails the test with the states seen, any dialog on screen and
        the end of the server's log."""
        t0, seen = time.time(), []
        for attempt in (1, 2):
            deadline = time.time() + timeout
            while time.time() < deadline:
                state = self.kernel_state(rel)
                if not seen or seen[-1] != state:
                    seen.append(state)
                if state == "idle":
                    return time.time() - t0
                time.sleep(0.5)
            if attempt == 2:
                break
            s = self.session(rel)
            # A warning, so the run's summary shows it (xdist swallows prints).
            warnings.warn(f"{rel}: kernel not idle after {timeout:.0f} s (states: "
                          f"{' -> '.join(seen)}); {'restarting it' if s else 'reloading'}",
                          stacklevel=1)
            if s:
                self.api(f"kernels/{s['kernel']['id']}/restart", method="POST")
                seen.append("restarted")
            else:
                page.reload()
                seen.append("page reloaded")
        dialog = page.evaluate("() => Array.from(document.querySelectorAll('.jp-Dialog'))"
                               ".map(e => e.innerText).join(' | ')")
        log = (self.root / "jupyterlab.log").read_text(errors="replace").splitlines()
        pytest.fail(f"{rel}: the notebook's kernel was not idle within {timeout:.0f} s, twice "
                    f"(states: {' -> '.join(seen)}; dialog on screen: {dialog or 'none'}). "
                    "The end of JupyterLab's log:\n  " + "\n  ".join(log[-15:]),
                    pytrace=False)

    def shut_down(self, rel: str) -> None:
        """Stop the notebook's kernel, so finished notebooks hold no memory."""
        s = self.session(rel)
        if s:
            self.api(f"sessions/{s['id']}", method="DELETE")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving copies of the notebooks (notebooks/) and of the
    student copies (student/): the originals stay output-free."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(NOTEBOOKS, root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_*"))
    if "student" in KINDS:
        given = os.environ.get("BROWSER_STUDENT_DIR")
        if given:
            if not sorted(Path(given).glob("*.ipynb")):
                pytest.fail(f"BROWSER_STUDENT_DIR={given} holds no notebooks: run `make student`"
                            " first, or unset it to make the copies here.", pytrace=False)
            shutil.copytree(given, root / "student", ignore=shutil.ignore_patterns(".ipynb_*"))
        else:
            from course_lib.student import make_student_copies

            make_student_copies(NOTEBOOKS, root / "student")
    port, token = free_port(), os.urandom(16).hex()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    # Settings and workspaces of our own: nothing read from or written to the user's ~/.jupyter,
    # and no "get notified about Jupyter news?" pop-up over the screenshots.
    settings = root / ".lab" / "settings"
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    # Every cell in the page (no windowing), so the test can see which cells still wait to run.
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline",
               JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(root / ".lab" / "workspaces"))
    env.pop("COURSE_FAST", None)
    if MODE == "smoke":
        env["COURSE_FAST"] = "1"
    log_path = root / "jupyterlab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start:\n{log_path.read_text()}", pytrace=False)
        # Without the token the server must refuse us.
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/api/contents", timeout=5)
        yield Lab(url, token, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROME_FLAGS)
        yield b
        b.close()


# ---------------------------------------------------------------- reading the saved notebook


def _text(s) -> str:
    return "".join(s) if isinstance(s, list) else s


def _src(cell) -> str:
    return _text(cell.get("source", ""))


def _key(i: int, cell) -> str:
    return cell.get("id") or str(i)


def _where(i: int, cell) -> str:
    first = next((ln.strip() for ln in _src(cell).splitlines() if ln.strip()), "")
    return f"cell {i} (`{first[:70]}`)"


def _tagged(cell) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", [])


def _is_stub_error(err) -> bool:
    return err.get("ename") in STUB_ERRORS or STUB_MESSAGE in err.get("evalue", "")


def _traceback_tail(err, lines: int = 6) -> str:
    text = ANSI.sub("", "\n".join(err.get("traceback", [])))
    kept = [ln for ln in text.splitlines() if ln.strip() and set(ln.strip()) != {"-"}]
    return "\n".join("      " + ln for ln in kept[-lines:])


def review(nb: dict, kind: str, declared: set[str]) -> dict:
    """What went wrong in an executed notebook.

    ``declared``: the cells (ids) tagged raises-exception in the course notebook itself, which
    may raise anything; in a student copy any other tagged cell may only fail like a stub.
    Returns the code-cell count, unexpected errors (messages), the cells that never ran and the
    number of expected (stub) errors seen."""
    unexpected, missing, n_code, n_stub = [], [], 0, 0
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        n_code += 1
        if cell.get("execution_count") is None:
            missing.append(i)
        # Saved notebooks may store text as a list of lines; the detector wants one string.
        outputs = [dict(o, text=_text(o["text"])) if "text" in o else o
                   for o in cell.get("outputs", [])]
        for msg in usage_errors(outputs):
            unexpected.append(f"{_where(i, cell)}: {msg} (a mistyped %magic)")
        for err in (o for o in cell.get("outputs", []) if o.get("output_type") == "error"):
            what = f"{err.get('ename')}: {ANSI.sub('', err.get('evalue', ''))[:300]}"
            if _tagged(cell) and (kind == "notebooks" or _key(i, cell) in declared):
                continue  # the notebook's author declared this error
            if _tagged(cell) and _is_stub_error(err):
                n_stub += 1
                continue  # an unfinished exercise, as expected in a student copy
            why = ("tagged raises-exception, but an unfinished exercise fails with "
                   "NotImplementedError or the check's 'exercise not done yet'; this is a real "
                   "error" if _tagged(cell) else "not tagged raises-exception")
            unexpected.append(f"{_where(i, cell)} raised {what}\n    ({why})\n"
                              f"{_traceback_tail(err)}")
    return dict(n_code=n_code, unexpected=unexpected, missing=missing, n_stub=n_stub)


def _declared(name: str) -> set[str]:
    nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    return {_key(i, c) for i, c in enumerate(nb["cells"]) if _tagged(c)}


# ---------------------------------------------------------------- driving JupyterLab


def save(page, path: Path) -> None:
    """Save the notebook from the browser (Ctrl+S) and wait until the file has been written."""
    before = path.stat().st_mtime_ns
    page.keyboard.press("Control+s")
    deadline = time.time() + 20
    while path.stat().st_mtime_ns == before and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)  # let the write finish


# Cells that are running or queued show "[*]" in their input prompt.
PENDING_CELLS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-InputPrompt'))
    .filter(e => e.textContent.includes('*')).length"""


def wait_for_run_all(page, lab: Lab, rel: str, check) -> dict:
    """Wait until Run All has finished or stopped, and return ``check()`` of the saved notebook.

    Two signals say when to look: no cell in the page shows "[*]" (running or queued), and the
    kernel's state (JupyterLab's REST API) is idle. The kernel's state alone is not enough: a
    progress bar (tqdm's widget) exchanges messages with the page, and the kernel reports idle
    after each of them while a long cell still runs. Two such polls a second apart mean Run All
    has finished or stopped at an error; then the notebook is saved from the browser and read
    back. Saving only then keeps the browser's cost low while the notebook runs."""
    deadline, idle, state = time.time() + TIMEOUT, 0, None
    path = lab.root / rel
    while time.time() < deadline:
        time.sleep(1)
        session = lab.session(rel)
        quiet = (session and session["kernel"]["execution_state"] == "idle"
                 and page.evaluate(PENDING_CELLS_JS) == 0)
        idle = idle + 1 if quiet else 0
        if idle < 2:
            continue
        save(page, path)
        state = check()
        # Done, or stopped at an error; idle for 10 s with cells left means Run All stopped.
        if state["unexpected"] or not state["missing"] or idle >= 10:
            return state
    save(page, path)
    return check()


# ---------------------------------------------------------------- the test


@pytest.mark.skipif(os.environ.get("SKIP_BROWSER") == "1", reason="SKIP_BROWSER=1")
@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}/{n}" for k, n in CASES])
def test_run_all_in_jupyterlab(lab, browser, kind, name):
    rel = f"{kind}/{name}"
    path = lab.root / kind / name
    if not path.exists():
        pytest.fail(f"{rel}: no such student copy; `make student` should have written it.",
                    pytrace=False)
    shot_dir = SHOTS / kind
    shot_dir.mkdir(parents=True, exist_ok=True)
    declared = _declared(name)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    t0 = time.time()
    try:
        # A workspace of its own, reset: JupyterLab would otherwise reopen the previous
        # notebook's tab (and start its kernel again).
        workspace = re.sub(r"\W", "-", rel)
        page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{rel}?reset&token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        kernel_s = lab.wait_for_idle_kernel(rel, page)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        state = wait_for_run_all(page, lab, rel, lambda: review(
            json.loads(path.read_text(encoding="utf-8")), kind, declared))
        page.screenshot(path=str(shot_dir / f"{Path(name).stem}.png"))
    finally:
        page.close()
        lab.shut_down(rel)
    seconds = time.time() - t0
    print(f"{rel}: kernel idle after {kernel_s:.0f} s; {state['n_code']} code cells in "
          f"{seconds:.0f} s ({MODE} mode), "
          f"{state['n_stub']} unfinished-exercise error(s) as expected")
    if state["unexpected"] or state["missing"] or os.environ.get("BROWSER_KEEP") == "1":
        shutil.copy(path, shot_dir / name)  # the notebook as the browser ran it
    else:
        (shot_dir / name).unlink(missing_ok=True)  # a failed run's copy from before
    shown = f"(screenshot and executed notebook in {shot_dir.relative_to(ROOT)}/)"
    if state["unexpected"]:
        pytest.fail(f"{rel}: error output in JupyterLab's Run All {shown}:\n  "
                    + "\n  ".join(state["unexpected"]), pytrace=False)
    if state["missing"]:
        nb = json.loads(path.read_text(encoding="utf-8"))
        first = state["missing"][0]
        pytest.fail(f"{rel}: {len(state['missing'])} of {state['n_code']} code cells never ran "
                    f"(Run All stopped, or BROWSER_TIMEOUT={TIMEOUT:.0f} s ran out); the first is "
                    f"{_where(first, nb['cells'][first])} {shown}", pytrace=False)
    if kind == "student" and any("NotImplementedError" in _src(c) for c in
                                 json.loads(path.read_text(encoding="utf-8"))["cells"]):
        # The stubs must actually run: a student copy whose exercises never fail is not one.
        assert state["n_stub"] > 0, f"{rel}: no unfinished exercise failed; are the stubs live?"


# ---------------------------------------------------------------- the rules, without a browser


def _code(source, tags=(), error=None, count=1, cell_id=None):
    cell = {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)},
            "execution_count": count, "outputs": []}
    if cell_id:
        cell["id"] = cell_id
    if error:
        cell["outputs"].append({"output_type": "error", "ename": error[0], "evalue": error[1],
                                "traceback": [f"\x1b[0;31m{error[0]}\x1b[0m: {error[1]}"]})
    return cell


def test_review_tells_expected_errors_from_real_ones():
    stub = ("NotImplementedError", "Exercise not done yet: replace this line with your code.")
    not_done = ("AssertionError", "f: exercise not done yet — replace the `raise ...` line")
    nb = {"cells": [
        {"cell_type": "markdown", "source": "# title", "metadata": {}},
        _code("def f(x):\n    raise NotImplementedError", [TAG], stub, cell_id="ex"),
        _code("checks.check_f(f)", [TAG], not_done, cell_id="check"),
        _code("x = 1", cell_id="plain"),
    ]}
    ok = review(nb, "student", declared=set())
    assert ok["unexpected"] == [] and ok["missing"] == [] and ok["n_stub"] == 2
    assert ok["n_code"] == 3

    # A tagged cell in a student copy that fails for another reason is a real error.
    nb["cells"][2] = _code("checks.check_f(g)", [TAG], ("NameError", "name 'g' is not defined"),
                           cell_id="check")
    bad = review(nb, "student", declared=set())
    assert len(bad["unexpected"]) == 1 and "cell 2 (`checks.check_f(g)`)" in bad["unexpected"][0]
    assert "NameError" in bad["unexpected"][0] and "\x1b[" not in bad["unexpected"][0]
    # ... unless the course notebook itself declares that cell's error.
    assert review(nb, "student", declared={"check"})["unexpected"] == []
    # In a course notebook a tagged cell may raise anything, an untagged one nothing.
    assert review(nb, "notebooks", declared=set())["unexpected"] == []
    nb["cells"][3] = _code("1 / 0", error=("ZeroDivisionError", "division by zero"))
    real = review(nb, "notebooks", declared=set())["unexpected"]
    assert len(real) == 1 and "not tagged raises-exception" in real[0]

    # Cells that never ran, and a mistyped %magic (printed, not raised).
    nb["cells"][3] = _code("%timeit -z", count=None)
    nb["cells"][3]["outputs"] = [{"output_type": "stream", "name": "stderr",
                                  "text": ["UsageError: option -z not recognized\n"]}]
    late = review(nb, "notebooks", declared=set())
    assert late["missing"] == [3] and "UsageError" in late["unexpected"][0]
