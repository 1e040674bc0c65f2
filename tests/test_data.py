"""course_lib.data, tested for real against an HTTP server on 127.0.0.1.

The "good file" is the real Tiny Shakespeare (so its SHA-256 is the registered one), found with
``data.fetch`` in the checkout's data/ or ``COURSE_DATA_DIR`` (CI points that at ../shared/data).
Every test downloads into its own temporary data directory, never the real one.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jax
import numpy as np
import pytest

from course_lib import data

DS = data.DATASETS["tinyshakespeare"]


@pytest.fixture(scope="module")
def shakespeare() -> bytes:
    """The bytes of the real, verified Tiny Shakespeare."""
    try:
        path = data.fetch("tinyshakespeare")
    except data.DataError as err:
        pytest.skip(f"Tiny Shakespeare is not available here (set COURSE_DATA_DIR): {err}")
    return path.read_bytes()


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; ``/truncated/<file>`` promises more bytes than it sends."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/truncated/"):
            body = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])  # then the connection closes (HTTP/1.0)
            return
        super().do_GET()

    def log_message(self, *args):  # keep pytest's output clean
        pass


class LocalServer:
    def __init__(self, root: Path):
        self.root = root
        handler = functools.partial(_Handler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: any free port
        self.httpd.requests = []
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = LocalServer(root)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def data_home(tmp_path, monkeypatch) -> Path:
    """An empty data directory, also set as COURSE_DATA_DIR so nothing reaches the real one."""
    folder = tmp_path / "data"
    monkeypatch.setenv("COURSE_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def dead_url():
    """A URL on 127.0.0.1 where nothing listens (the port stays bound, so nobody takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/input.txt"


# ---- download, verify, cache ---------------------------------------------------------------


def test_good_file_is_downloaded_verified_and_cached(server, data_home, shakespeare):
    (server.root / "input.txt").write_bytes(shakespeare)
    url = server.url("input.txt")

    text = data.load_text("tinyshakespeare", url=url)
    assert text == shakespeare.decode("utf-8")
    assert len(shakespeare) == DS.n_bytes
    dest = data_home / DS.filename
    assert data.sha256_of(dest) == DS.sha256
    assert server.requests == ["/input.txt"]

    assert data.fetch("tinyshakespeare", url=url) == dest  # second call: from the cache
    assert data.load_text("tinyshakespeare", url=url) == text
    assert server.requests == ["/input.txt"], "a verified local copy must not be downloaded again"
    assert sorted(p.name for p in data_home.iterdir()) == [DS.filename]  # no temporary files


def test_wrong_checksum_is_an_error_and_saves_nothing(server, data_home):
    (server.root / "input.txt").write_text("To be, or not to be: not the file you expected.\n")
    with pytest.raises(data.DataError) as info:
        data.fetch("tinyshakespeare", url=server.url("input.txt"))
    msg = str(info.value)
    assert DS.sha256 in msg
    assert hashlib.sha256(b"To be").hexdigest() not in msg
    assert server.url("input.txt") in msg
    assert server.requests == ["/input.txt"]
    assert not data_home.exists() or list(data_home.iterdir()) == [], "nothing may be saved"


def test_server_down_names_the_canonical_url_and_destination(data_home, dead_url):
    with pytest.raises(data.DataError) as info:
        data.fetch("tinyshakespeare", url=dead_url, timeout=5)
    msg = str(info.value)
    assert DS.url in msg, "the message must say which URL to fetch by hand"
    assert str(data_home / DS.filename) in msg, "the message must say where to put the file"
    assert "COURSE_DATA_DIR" in msg
    assert not data_home.exists() or list(data_home.iterdir()) == []


def test_http_error_is_a_data_error(server, data_home):
    with pytest.raises(data.DataError, match="404") as info:
        data.fetch("tinyshakespeare", url=server.url("missing.txt"))
    assert DS.url in str(info.value)


def test_truncated_download_is_an_error_and_saves_nothing(server, data_home, shakespeare):
    (server.root / "input.txt").write_bytes(shakespeare)
    with pytest.raises(data.DataError):
        data.fetch("tinyshakespeare", url=server.url("truncated/input.txt"))
    assert not data_home.exists() or list(data_home.iterdir()) == []


def test_corrupt_local_file_is_detected_and_replaced(server, data_home, shakespeare):
    (server.root / "input.txt").write_bytes(shakespeare)
    data_home.mkdir()
    dest = data_home / DS.filename
    dest.write_bytes(shakespeare[: len(shakespeare) // 3])  # an interrupted copy

    with pytest.warns(UserWarning, match="corrupt or truncated"):
        path = data.fetch("tinyshakespeare", url=server.url("input.txt"))
    assert path == dest
    assert dest.read_bytes() == shakespeare
    assert server.requests == ["/input.txt"]


def test_unknown_data_set():
    with pytest.raises(data.DataError, match="tinyshakespeare"):
        data.fetch("no-such-data")


# ---- where files live ----------------------------------------------------------------------


def test_course_data_dir_is_honoured(monkeypatch, tmp_path, server, shakespeare, dead_url):
    folder = tmp_path / "offline-classroom"
    monkeypatch.setenv("COURSE_DATA_DIR", str(folder))
    assert data.data_dir() == folder
    assert data.data_dir(tmp_path / "explicit") == tmp_path / "explicit"  # the argument wins

    (server.root / "input.txt").write_bytes(shakespeare)
    assert data.fetch("tinyshakespeare", url=server.url("input.txt")) == folder / DS.filename
    # Offline now, but the verified copy in COURSE_DATA_DIR is enough.
    assert data.load_text("tinyshakespeare", url=dead_url) == shakespeare.decode("utf-8")


def test_default_dir_without_override(monkeypatch):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    folder = data.data_dir()
    repo_data = Path(data.__file__).resolve().parent.parent / "data"
    assert folder == repo_data or folder.name == "course_lib"


# ---- splits and batches --------------------------------------------------------------------


def test_train_val_split_sizes():
    ids = np.arange(1000)
    train, val = data.train_val_split(ids, val_fraction=0.1)
    assert (len(train), len(val)) == (900, 100)
    assert np.array_equal(np.concatenate([train, val]), ids)  # head and tail, no shuffling


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_train_val_split_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        data.train_val_split(np.arange(100), val_fraction=fraction)


def test_train_val_split_too_short():
    with pytest.raises(ValueError, match="Cannot split"):
        data.train_val_split(np.arange(3), val_fraction=0.1)


def test_get_batch_shapes_and_shift():
    ids = np.arange(50, dtype=np.int32)  # token i has id i, so a window's ids show its position
    x, y = data.get_batch(ids, batch_size=8, block_size=5, key=jax.random.key(0))
    assert x.shape == y.shape == (8, 5)
    assert x.dtype == y.dtype == np.int32
    x, y = np.asarray(x), np.asarray(y)
    assert np.array_equal(y, x + 1), "targets are the inputs shifted by one"
    assert np.array_equal(x, x[:, :1] + np.arange(5)), "each row is a contiguous window"
    assert x.min() >= 0 and y.max() <= 49


def test_get_batch_uses_every_start_and_depends_on_the_key():
    ids = np.arange(7, dtype=np.int32)  # block 3: valid starts are 0..3 (target of 3+2 is 6)
    x, y = data.get_batch(ids, batch_size=200, block_size=3, key=jax.random.key(1))
    assert set(np.asarray(x[:, 0]).tolist()) == {0, 1, 2, 3}
    assert int(y.max()) == 6
    a, _ = data.get_batch(ids, 16, 3, jax.random.key(2))
    b, _ = data.get_batch(ids, 16, 3, jax.random.key(3))
    assert not np.array_equal(a, b)


def test_get_batch_too_short():
    with pytest.raises(ValueError, match="block_size=10"):
        data.get_batch(np.arange(10), batch_size=2, block_size=10, key=jax.random.key(0))
    x, _ = data.get_batch(np.arange(11), batch_size=2, block_size=10, key=jax.random.key(0))
    assert x.shape == (2, 10)  # exactly block_size + 1 tokens is enough


def test_get_batch_rejects_2d():
    with pytest.raises(ValueError, match="1-D"):
        data.get_batch(np.zeros((4, 20), np.int32), 2, 3, jax.random.key(0))


# ---- in_batches: every call one shape, the padding's outputs dropped -----------------------


def test_in_batches_pads_the_last_batch_and_drops_its_outputs():
    x = np.arange(10 * 3).reshape(10, 3)
    mask = np.arange(10) % 2 == 0
    shapes = []

    def fn(a, m):
        shapes.append((a.shape, m.shape))
        return a.sum(axis=1) * m, a[:, :1]

    total, first = data.in_batches(fn, (x, mask), 4)
    assert shapes == [((4, 3), (4,))] * 3  # 4 + 4 + 2 rows, the last batch padded to 4
    assert np.array_equal(total, x.sum(axis=1) * mask) and np.array_equal(first, x[:, :1])
    one = data.in_batches(lambda a: a * 2, (x,), 16)  # one array out, fewer rows than a batch
    assert one.shape == (10, 3) and np.array_equal(one, x * 2)
    with pytest.raises(ValueError, match="same number of rows"):
        data.in_batches(fn, (x, mask[:5]), 4)
