"""Automatic feedback for the notebooks' exercises.

Each ``check_<exercise>(student_fn)`` calls the learner's function on several test cases and
compares it with a reference. When the answer is right it prints one line
(``✓ perplexity_from_logprobs: correct (4 cases)``); when it is wrong it raises ``AssertionError``
whose message names the most likely mistake (a forgotten minus sign, normalising the wrong axis,
reusing a PRNG key, ...). A stub that still raises ``NotImplementedError`` gets a friendly
"not done yet" message. Checks never ask for input.

Every exercise is declared once, as data: an ``Exercise`` with its cases, its reference, its
tolerance and its typical mistakes (each a wrong implementation and the hint it earns); one
runner checks a learner's function against it (``_core.py`` explains the declaration). The
references live in the library module of their concept (``attention.split_heads``,
``tokenizers.merge``, ``generate.sample_bigram``, ``metrics.roc_auc_pairs``, ...).

Layout: ``_core.py`` holds the declaration and the runner; each notebook's exercises live in
their own module, re-exported here, so ``checks.check_<exercise>`` works for every notebook.
"""

from course_lib.checks.attention import *  # noqa: F403
from course_lib.checks.background import *  # noqa: F403
from course_lib.checks.finetune import *  # noqa: F403
from course_lib.checks.generation import *  # noqa: F403
from course_lib.checks.modules import *  # noqa: F403
from course_lib.checks.pretrained import *  # noqa: F403
from course_lib.checks.retrieval import *  # noqa: F403
from course_lib.checks.scaling import *  # noqa: F403
from course_lib.checks.tokens import *  # noqa: F403
from course_lib.checks.training import *  # noqa: F403
from course_lib.checks.transformer import *  # noqa: F403
