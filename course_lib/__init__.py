"""course_lib: the small library behind the course's notebooks.

One module per concept; import what you need, e.g. ``from course_lib import attention``.
Submodules are imported lazily, so ``import course_lib`` stays quick.
"""

import importlib

__version__ = "0.1.0"

# Every module of the package (tests/test_bad_input.py fails when one is missing here).
_MODULES = (
    "attention", "tokenizers", "data", "model", "seq2seq", "recurrent", "parallel", "train",
    "generate", "metrics", "numberwords", "translation", "facts", "retrieval", "checks", "plots",
    "runtime", "student", "finetune", "pretrained", "instructions", "grading", "grade",
)
__all__ = list(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'course_lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES))  # tab completion lists the lazy modules
