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
their own module, re-exported here, so ``checks.check_<exercise>`` works for every notebook;
``_to_move.py`` holds references waiting for their concept module.
"""

from course_lib import attention as _attention
from course_lib import generate as _generate
from course_lib import metrics as _metrics
from course_lib import model as _model
from course_lib import parallel as _parallel
from course_lib import tokenizers as _tokenizers
from course_lib.checks import _to_move, generation, training
from course_lib.checks.attention import *  # noqa: F403
from course_lib.checks.background import *  # noqa: F403
from course_lib.checks.generation import *  # noqa: F403
from course_lib.checks.modules import *  # noqa: F403
from course_lib.checks.retrieval import *  # noqa: F403
from course_lib.checks.scaling import *  # noqa: F403
from course_lib.checks.tokens import *  # noqa: F403
from course_lib.checks.training import *  # noqa: F403
from course_lib.checks.transformer import *  # noqa: F403

# The former names of the reference solutions, kept until the notebooks use the new ones:
# `checks.reference_<x>` is the function on the right.
reference_split_heads = _attention.split_heads
reference_merge_heads = _attention.merge_heads
reference_count_pairs = _tokenizers.count_pairs
reference_merge = _tokenizers.merge
reference_normalize_bigram_counts = _generate.normalize_bigram_counts
reference_sample_bigram = _generate.sample_bigram
reference_roc_auc_pairs = _metrics.roc_auc_pairs
reference_copied_fraction = _metrics.copied_fraction
reference_top_k_filter = generation.TOP_K_FILTER.reference  # generate.filter_top_k
reference_top_p_filter = generation.TOP_P_FILTER.reference  # generate.next_token_probs(log p)
# numberwords.chinese_number:
reference_chinese_number_small = generation.CHINESE_NUMBER_SMALL.reference
reference_train_step = training.train_step  # train.train_step once it exists
reference_mlp_forward = _model.mlp_forward
reference_block_forward = _model.block_forward
reference_gpt_param_count = _model.gpt_param_count
reference_next_token_loss = _to_move.next_token_loss
reference_lr_at = _to_move.lr_at
reference_clip_by_global_norm = _to_move.clip_by_global_norm
reference_shard_shape = _parallel.shard_shape
reference_round_to_bf16 = _parallel.round_to_bf16
reference_training_days = _model.training_days
