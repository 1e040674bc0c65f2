"""Text data: a checksum-verified download with a local cache, splits and batches.

Where files live, first match wins:
1. the ``data_dir`` argument, or the ``COURSE_DATA_DIR`` environment variable;
2. the checkout's ``data/`` folder, when course_lib is used from the repository;
3. a per-user cache (``$XDG_CACHE_HOME/course_lib`` or ``~/.cache/course_lib``).
A missing or corrupt file is downloaded again; every file is checked against its SHA-256.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Dataset:
    filename: str
    url: str
    sha256: str
    n_bytes: int
    source: str
    licence: str


DATASETS: dict[str, Dataset] = {
    "tinyshakespeare": Dataset(
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        n_bytes=1_115_394,
        source="Andrej Karpathy's char-rnn repository: about 40,000 lines of Shakespeare's plays",
        licence="The plays are in the public domain; the compilation is shared in char-rnn (MIT)",
    ),
}


class DataError(RuntimeError):
    """A data file could not be found, downloaded or verified; the message says what to do."""


def _repo_data_dir() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "data" / "README.md").is_file():
        return root / "data"
    return None


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder data files are read from and downloaded to (see the module docstring)."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get("COURSE_DATA_DIR"):
        return Path(os.environ["COURSE_DATA_DIR"]).expanduser()
    repo = _repo_data_dir()
    if repo is not None:
        return repo
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "course_lib"


_resolve_data_dir = data_dir  # fetch's ``data_dir`` argument shadows the function


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, expected_sha256: str, timeout: float) -> None:
    """Download to a temporary file beside ``dest``, verify it, then move it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 16):
                out.write(chunk)
        got = sha256_of(Path(tmp))
        if got != expected_sha256:
            raise DataError(
                f"The file downloaded from {url} has SHA-256 {got}, but {expected_sha256} was "
                "expected: the download is corrupt or the file changed upstream. Nothing was saved. "
                f"Try again, or fetch the file yourself and put it at {dest}."
            )
        os.replace(tmp, dest)  # atomic: a reader never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Return the path of a verified copy of data set ``name``, downloading it if needed.

    ``url`` overrides the canonical address (tests use a server on 127.0.0.1).
    """
    if name not in DATASETS:
        raise DataError(f"Unknown data set {name!r}. Known: {', '.join(sorted(DATASETS))}.")
    ds = DATASETS[name]
    folder = _resolve_data_dir(data_dir)
    path = folder / ds.filename
    if path.is_file():
        got = sha256_of(path)
        if got == ds.sha256:
            return path
        warnings.warn(
            f"{path} is corrupt or truncated (SHA-256 {got[:12]}..., expected {ds.sha256[:12]}...); "
            "downloading a fresh copy.",
            stacklevel=2,
        )
    source = url or ds.url
    try:
        _download(source, path, ds.sha256, timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise DataError(
            f"Could not download {name!r} ({err}). If this machine is offline, fetch\n"
            f"  {ds.url}\n"
            f"on another machine ({ds.n_bytes:,} bytes, SHA-256 {ds.sha256}) and save it as\n"
            f"  {path}\n"
            "or point the environment variable COURSE_DATA_DIR at a folder that holds "
            f"{ds.filename}."
        ) from err
    return path


def load_text(name: str = "tinyshakespeare", **kwargs) -> str:
    """The text of data set ``name`` (verified, downloaded once). Keyword args go to ``fetch``."""
    return fetch(name, **kwargs).read_text(encoding="utf-8")


def train_val_split(data, val_fraction: float = 0.1):
    """Split a token sequence into a training head and a validation tail (no shuffling:
    random windows from one stretch of text would leak neighbouring text into validation)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    n_val = int(round(len(data) * val_fraction))
    if n_val == 0 or n_val == len(data):
        raise ValueError(f"Cannot split {len(data)} tokens with val_fraction={val_fraction}.")
    return data[: len(data) - n_val], data[len(data) - n_val :]


def get_batch(data, batch_size: int, block_size: int, key: jax.Array):
    """Sample ``batch_size`` random windows: inputs ``x`` and targets ``y`` shifted by one.

    data: 1-D int array of token ids.  Returns x, y of shape (batch_size, block_size), int32.
    """
    data = jnp.asarray(data)
    if data.ndim != 1:
        raise ValueError(f"get_batch expects a 1-D array of token ids, got shape {data.shape}.")
    if not jnp.issubdtype(data.dtype, jnp.integer):
        raise TypeError(f"get_batch expects integer token ids, got dtype {data.dtype}.")
    for name, value in (("batch_size", batch_size), ("block_size", block_size)):
        if not is_int(value) or value < 1:
            raise ValueError(f"get_batch: {name} must be a positive integer, got {value!r}.")
    if len(data) < block_size + 1:
        raise ValueError(
            f"The data has {len(data)} tokens, too few for windows of block_size={block_size} "
            "plus one target. Use a smaller block_size or more text."
        )
    starts = jax.random.randint(key, (batch_size,), 0, len(data) - block_size)  # (B,)
    offsets = jnp.arange(block_size)  # (T,)
    idx = starts[:, None] + offsets[None, :]  # (B, T)
    return data[idx].astype(jnp.int32), data[idx + 1].astype(jnp.int32)


def in_batches(fn, arrays, batch_size: int):
    """``fn`` over the rows of ``arrays`` (a tuple of arrays with equal first axes),
    ``batch_size`` rows per call. The last batch is padded to ``batch_size`` rows by repeating
    its last row, so every call has one shape (a jitted ``fn`` compiles once), and the padding's
    outputs are dropped. ``fn`` returns an array, or a tuple of arrays, with one row per input
    row; the results come back concatenated as numpy arrays, in the same structure."""
    arrays = [np.asarray(x) for x in arrays]
    n = len(arrays[0])
    if n == 0 or any(len(x) != n for x in arrays):
        raise ValueError(f"in_batches needs arrays with the same number of rows, at least one; "
                         f"got {[len(x) for x in arrays]}.")
    parts = []
    for a in range(0, n, batch_size):
        k = min(batch_size, n - a)
        batch = [x[a:a + k] for x in arrays]
        if k < batch_size:
            batch = [np.concatenate([x, np.repeat(x[-1:], batch_size - k, axis=0)]) for x in batch]
        out = fn(*batch)
        parts.append(tuple(np.asarray(o)[:k] for o in out) if isinstance(out, tuple)
                     else np.asarray(out)[:k])
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(col) for col in zip(*parts))
    return np.concatenate(parts)


def is_int(x) -> bool:
    """A whole number (Python or NumPy integer) and not a bool: True is an int in Python, and
    ``steps=True`` or ``top_k=True`` is a mistake, not 1. Every size and count check uses this."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def as_array(ids) -> np.ndarray:
    """Token ids as a compact numpy int32 array (ids must be integers that fit in int32)."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"as_array expects integer token ids, got dtype {arr.dtype}.")
    if arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max:
        raise ValueError(f"as_array: ids {arr.min()}..{arr.max()} do not fit in int32.")
    return arr.astype(np.int32)
