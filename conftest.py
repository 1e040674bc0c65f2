"""Repository-wide pytest hooks.

nbval guard: IPython reports a ``UsageError`` (a mistyped ``%magic``, a bad magic option) by
printing ``UsageError: ...`` to stderr instead of raising, so nbval, which only fails a cell on an
``error`` message from the kernel, lets it pass. This hook fails such a cell. It lives at the
repository root because ``tests/conftest.py`` would not apply to ``notebooks/``.
"""

from __future__ import annotations

import re

import pytest

_USAGE_ERROR = re.compile(r"^UsageError: ")


def usage_errors(outputs) -> list[str]:
    """The UsageError messages among a cell's outputs (nbformat-style dicts)."""
    found = []
    for out in outputs or ():
        kind = out.get("output_type")
        if kind == "error" and out.get("ename") == "UsageError":
            found.append(f"UsageError: {out.get('evalue', '')}")
        elif kind == "stream":
            found += [line for line in out.get("text", "").splitlines() if _USAGE_ERROR.match(line)]
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield  # nbval's IPyNbCell.runtest ran the cell and kept its outputs
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: no notebook items to guard
        return result
    if isinstance(item, IPyNbCell):
        errors = usage_errors(item.test_outputs)
        if errors:
            item.raise_cell_error(
                "IPython reported a UsageError (nbval would let it pass)",
                "\n" + "\n".join(errors),
            )
    return result
