"""Tests for notebook 06c's checks: each passes the reference and other right answers, and
names the typical mistakes of learner-written wrong versions."""

import math

import jax
import jax.numpy as jnp
import optax
import pytest
from checkhelp import fails_with
from flax import nnx

from course_lib import checks, finetune

# ---------------------------------------------------------------- response_loss


def test_response_loss_passes_reference_and_other_right_answers(capsys):
    checks.check_response_loss(finetune.response_loss)

    def with_optax(logits, tokens, response_mask):
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
        m = response_mask[:, 1:]
        return jnp.where(m, nll, 0.0).sum() / m.sum()

    checks.check_response_loss(with_optax)
    assert capsys.readouterr().out.count("✓ response_loss: correct") == 2


def _nll(logits, targets):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("wrong, words", [
    (lambda lg, tk, m: (_nll(lg, tk[:, 1:]) * m[:, :-1]).sum() / m[:, :-1].sum(),
     ["mask not shifted", "response_mask[:, 1:]"]),
    (lambda lg, tk, m: _nll(lg, tk[:, 1:]).mean(), ["prompt tokens counted"]),
    (lambda lg, tk, m: (_nll(lg, tk[:, 1:]) * m[:, 1:]).mean(), ["all b * t positions"]),
    (lambda lg, tk, m: (_nll(lg, tk[:, 1:]) * m[:, 1:]).sum(), ["summed"]),
    (lambda lg, tk, m: ((_nll(lg, tk[:, 1:]) * m[:, 1:]).sum(1) / m[:, 1:].sum(1)).mean(),
     ["per sequence", "weigh the same"]),
    (lambda lg, tk, m: (_nll(lg, tk[:, :-1]) * m[:, 1:]).sum() / m[:, 1:].sum(),
     ["targets not shifted"]),
    (lambda lg, tk, m: (_nll(lg, tk[:, 1:]) * (1 - m[:, 1:])).sum() / (1 - m[:, 1:]).sum(),
     ["inverted"]),
])
def test_response_loss_names_the_mistake(wrong, words):
    fails_with(checks.check_response_loss, wrong, *words)


# ---------------------------------------------------------------- lora_linear


class MyLoRA(nnx.Module):
    """A learner's adapter, written differently from the library's (nnx.Param weights, the
    scale applied to B)."""

    def __init__(self, base, rank, alpha, *, rngs, b_init=None, a_zero=False, scale=None,
                 add_base=True):
        self.base, self.add_base = base, add_base
        d_in, d_out = base.kernel[...].shape
        a = jax.random.normal(rngs.params(), (d_in, rank)) / math.sqrt(d_in)
        self.lora_a = nnx.Param(jnp.zeros_like(a) if a_zero else a)
        self.lora_b = nnx.Param(jnp.zeros((rank, d_out)) if b_init is None
                                else b_init((rank, d_out)))
        self.scale = alpha / rank if scale is None else scale(rank, alpha)

    def __call__(self, x):
        delta = x @ (self.lora_a[...] @ (self.lora_b[...] * self.scale))
        return self.base(x) + delta if self.add_base else delta


def _variant(**options):
    return lambda base, rank, alpha, *, rngs: MyLoRA(base, rank, alpha, rngs=rngs, **options)


def test_lora_linear_passes_reference_and_another_right_answer(capsys):
    checks.check_lora_linear(finetune.LoRALinear)
    checks.check_lora_linear(MyLoRA)
    assert capsys.readouterr().out.count("✓ lora_linear: correct") == 2


@pytest.mark.parametrize("options, words", [
    (dict(scale=lambda r, a: 1.0), ["scale forgotten"]),
    (dict(scale=lambda r, a: r / a), ["scale inverted"]),
    (dict(b_init=lambda shape: jnp.ones(shape)), ["b is not zero at initialisation"]),
    (dict(add_base=False), ["base not added"]),
    (dict(a_zero=True), ["a is zero at initialisation too", "never learns"]),
])
def test_lora_linear_names_the_mistake(options, words):
    fails_with(checks.check_lora_linear, _variant(**options), *words)


def test_lora_linear_explains_missing_or_misshaped_weights():
    class NoVariables(MyLoRA):
        def __init__(self, base, rank, alpha, *, rngs):
            super().__init__(base, rank, alpha, rngs=rngs)
            self.lora_a = jnp.asarray(self.lora_a[...])  # a plain array, not a Variable

    class Transposed(MyLoRA):
        def __init__(self, base, rank, alpha, *, rngs):
            super().__init__(base, rank, alpha, rngs=rngs)
            self.lora_a = nnx.Param(self.lora_a[...].T)

        def __call__(self, x):
            return self.base(x) + x @ self.lora_a[...].T @ self.lora_b[...] * self.scale

    fails_with(checks.check_lora_linear, NoVariables, "nnx.variable", "lora_a")
    fails_with(checks.check_lora_linear, Transposed, "lora_a has shape", "(d_in, rank)")

    def stub(base, rank, alpha, *, rngs):
        raise NotImplementedError

    fails_with(checks.check_lora_linear, stub, "not done yet")


# ---------------------------------------------------------------- dpo_loss


def test_dpo_loss_passes_reference_and_other_right_answers(capsys):
    checks.check_dpo_loss(finetune.dpo_loss)

    def with_softplus(pc, pr, rc, rr, beta):
        return jnp.mean(jax.nn.softplus(-beta * ((pc - pr) - (rc - rr))))

    checks.check_dpo_loss(with_softplus)
    assert capsys.readouterr().out.count("✓ dpo_loss: correct") == 2


def _ratio(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


@pytest.mark.parametrize("wrong, words", [
    (lambda pc, pr, rc, rr, b: -jnp.mean(jax.nn.log_sigmoid(b * ((pr - rr) - (pc - rc)))),
     ["sign flipped"]),
    (lambda pc, pr, rc, rr, b: jnp.mean(jax.nn.softplus(-b * (pc - pr))),
     ["reference terms missing"]),
    (lambda pc, pr, rc, rr, b: -b * jnp.mean(jnp.log(jax.nn.sigmoid(_ratio(pc, pr, rc, rr)))),
     ["beta outside the sigmoid"]),
    (lambda pc, pr, rc, rr, b: -jnp.sum(jax.nn.log_sigmoid(b * _ratio(pc, pr, rc, rr))),
     ["summed"]),
    (lambda pc, pr, rc, rr, b: -jnp.mean(jax.nn.sigmoid(b * _ratio(pc, pr, rc, rr))),
     ["log-sigmoid"]),
    (lambda pc, pr, rc, rr, b: -jnp.mean(jax.nn.log_sigmoid(_ratio(pc, pr, rc, rr))),
     ["beta forgotten"]),
])
def test_dpo_loss_names_the_mistake(wrong, words):
    fails_with(checks.check_dpo_loss, wrong, *words)
