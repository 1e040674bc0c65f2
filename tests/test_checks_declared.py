"""Every exercise declared in course_lib.checks, walked automatically: the reference passes its
check, and every declared mistake and property, fed to the check as the learner's function,
fails with its own hint."""

import pytest

from course_lib import checks, train

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
    want = train.train_step
    assert checks.check_train_step.exercise.reference is want
