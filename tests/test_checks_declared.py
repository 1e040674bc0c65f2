"""Every exercise declared in course_lib.checks, walked automatically: the reference passes its
check, and every declared mistake and property, fed to the check as the learner's function,
fails with its own hint."""

import pytest

from course_lib import attention, checks, generate, metrics, model, parallel, tokenizers, train
from course_lib.checks import _to_move

CHECKS = {name: fn for name, fn in sorted(vars(checks).items()) if name.startswith("check_")}
EXERCISES = [fn.exercise for fn in CHECKS.values() if hasattr(fn, "exercise")]
MISTAKES = [pytest.param(ex, m, id=f"{ex.name}-{i}")
            for ex in EXERCISES for i, m in enumerate((*ex.mistakes, *ex.properties))]


def test_every_check_is_declared():
    assert all(hasattr(fn, "exercise") for fn in CHECKS.values()), sorted(
        n for n, fn in CHECKS.items() if not hasattr(fn, "exercise"))
    assert len(EXERCISES) >= 31 and len(MISTAKES) >= 200
    for ex in EXERCISES:
        assert CHECKS[f"check_{ex.name}"].exercise is ex
        assert ex.mistakes or ex.properties, ex.name
        for m in (*ex.mistakes, *ex.properties):
            assert callable(m.wrong) and m.hint.strip(), (ex.name, m.hint)


@pytest.mark.parametrize("ex", EXERCISES, ids=lambda ex: ex.name)
def test_reference_passes(ex, capsys):
    CHECKS[f"check_{ex.name}"](ex.reference)
    assert f"✓ {ex.name}: correct" in capsys.readouterr().out


@pytest.mark.parametrize("ex, mistake", MISTAKES)
def test_each_declared_mistake_gets_its_hint(ex, mistake):
    with pytest.raises(AssertionError) as info:
        CHECKS[f"check_{ex.name}"](mistake.wrong)
    assert str(info.value).startswith(f"{ex.name}: ")
    assert mistake.hint in str(info.value), f"expected {mistake.hint!r}, got:\n{info.value}"


def test_train_step_check_uses_the_library_step_when_there_is_one():
    want = getattr(train, "train_step", None) or _to_move.train_step
    assert checks.check_train_step.exercise.reference is want


def test_old_reference_names_are_the_new_functions():
    old_to_new = {
        "reference_split_heads": attention.split_heads,
        "reference_merge_heads": attention.merge_heads,
        "reference_count_pairs": tokenizers.count_pairs,
        "reference_merge": tokenizers.merge,
        "reference_normalize_bigram_counts": generate.normalize_bigram_counts,
        "reference_sample_bigram": generate.sample_bigram,
        "reference_roc_auc_pairs": metrics.roc_auc_pairs,
        "reference_copied_fraction": metrics.copied_fraction,
        "reference_mlp_forward": model.mlp_forward,
        "reference_block_forward": model.block_forward,
        "reference_gpt_param_count": model.gpt_param_count,
        "reference_next_token_loss": _to_move.next_token_loss,
        "reference_lr_at": _to_move.lr_at,
        "reference_clip_by_global_norm": _to_move.clip_by_global_norm,
        "reference_train_step": checks.check_train_step.exercise.reference,
        "reference_shard_shape": parallel.shard_shape,
        "reference_round_to_bf16": parallel.round_to_bf16,
        "reference_training_days": model.training_days,
        "reference_top_k_filter": checks.check_top_k_filter.exercise.reference,
        "reference_top_p_filter": checks.check_top_p_filter.exercise.reference,
        "reference_chinese_number_small": checks.check_chinese_number_small.exercise.reference,
    }
    assert {n for n in dir(checks) if n.startswith("reference_")} == set(old_to_new)
    for old, new in old_to_new.items():
        assert getattr(checks, old) is new, old
