"""What every exercise check does, whichever notebook it belongs to: a stub, a function that
returns nothing, one that crashes and one that returns the wrong type all get a friendly hint."""

import pytest
from checkhelp import fails_with

from course_lib import checks

ALL_CHECKS = [getattr(checks, name) for name in sorted(dir(checks)) if name.startswith("check_")]
# The checks of functions (the checks of nnx.Module classes, in checks/modules.py and 06c's LoRA
# layer, take a class and have their own tests). check_train_step's learner returns a tuple; its
# own file tests its looser messages.
MODULE_CHECKS = (checks.check_causal_self_attention, checks.check_block_module,
                 checks.check_gpt_module, checks.check_lora_linear)
GENERIC = [c for c in ALL_CHECKS if c is not checks.check_train_step and c not in MODULE_CHECKS]


def test_every_notebook_has_checks():
    assert len(ALL_CHECKS) >= 5 * 3  # at least three exercises for each of notebooks 01-05


@pytest.mark.parametrize("check", GENERIC, ids=lambda c: c.__name__)
def test_stub_none_and_crash_give_friendly_messages(check):
    def stub(*args, **kwargs):
        raise NotImplementedError

    def returns_none(*args, **kwargs):
        pass

    def crashes(*args, **kwargs):
        return 1 / 0

    fails_with(check, stub, "not done yet", "reference")
    fails_with(check, returns_none, "returned none", "return")
    fails_with(check, crashes, "zerodivisionerror", "called with")


@pytest.mark.parametrize("check", GENERIC, ids=lambda c: c.__name__)
def test_wrong_type_is_caught(check):
    fails_with(check, lambda *a, **k: "hello", "str")
