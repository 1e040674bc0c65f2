"""JupyterLab in a real browser: open a notebook, press "Run All", and require a clean run.

Starts JupyterLab on 127.0.0.1 with a token, drives Debian's Chromium with Playwright (no browser
download), runs all cells through JupyterLab's own Run menu in smoke mode, saves the notebook from
the browser and fails on any error output or unexecuted cell. A screenshot is written to
build/browser/. Run with `make test-browser` (part of `make test`); SKIP_BROWSER=1 skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = os.environ.get("BROWSER_NOTEBOOK", "01_background.ipynb")
SHOTS = ROOT / "build" / "browser"
CHROME_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


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


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebook (the original stays
    output-free)."""
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, tmp_path / NOTEBOOK)
    port, token = free_port(), os.urandom(16).hex()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    env = dict(os.environ, COURSE_FAST="1", MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()}")
        # Without the token the server must refuse us.
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/api/contents", timeout=5)
        yield url, token, tmp_path / NOTEBOOK
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def wait_for_idle_kernel(url: str, token: str, timeout: float = 120) -> None:
    """Wait until the notebook's kernel has started and is idle (JupyterLab's REST API)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=5) as r:
            sessions = json.load(r)
        if sessions and sessions[0]["kernel"]["execution_state"] == "idle":
            return
        time.sleep(0.5)
    pytest.fail("The notebook's kernel did not start within two minutes.")


def saved_state(path: Path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    missing = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    return len(code), errors, missing


def test_run_all_in_jupyterlab(lab):
    if os.environ.get("SKIP_BROWSER") == "1":
        pytest.skip("SKIP_BROWSER=1")
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    url, token, path = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROME_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        wait_for_idle_kernel(url, token)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        deadline = time.time() + 600
        n_code, errors, missing = saved_state(path)
        while time.time() < deadline:
            time.sleep(5)
            page.keyboard.press("Control+s")  # save what the browser shows, then read it back
            time.sleep(1)
            n_code, errors, missing = saved_state(path)
            if errors or not missing:
                break
        page.screenshot(path=str(SHOTS / f"{Path(NOTEBOOK).stem}.png"))
        browser.close()
    assert not errors, "error output in the browser run: " + "; ".join(
        f"{e.get('ename')}: {e.get('evalue')}" for e in errors)
    assert not missing, f"{len(missing)} of {n_code} code cells never ran (first: #{missing[0]})"
