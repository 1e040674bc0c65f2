"""Tests for notebook 05's checks: each passes the reference (and the library's own version)
and fails each typical wrong implementation with a hint that names the mistake."""

import math

import jax
import jax.numpy as jnp
import optax
import pytest
from checkhelp import fails_with

from course_lib import checks, train
from course_lib.checks.training import train_step


def test_train_step_stub_none_and_crash_give_friendly_messages():
    """The other checks get this test in test_checks_common.py; check_train_step's learner
    returns a tuple, so its messages are looser."""
    check = checks.check_train_step

    def stub(*args, **kwargs):
        raise NotImplementedError

    def returns_none(*args, **kwargs):
        pass

    def crashes(*args, **kwargs):
        return 1 / 0

    fails_with(check, stub, "not done yet", "reference")
    fails_with(check, returns_none, "none", "return")
    fails_with(check, crashes, "zerodivisionerror")


# ---------------------------------------------------------------- next_token_loss


def test_next_token_loss_passes_reference_and_library(capsys):
    checks.check_next_token_loss(train.next_token_loss)
    checks.check_next_token_loss(lambda logits, tokens: train.loss_fn(logits, tokens[:, 1:]))
    assert capsys.readouterr().out.count("✓ next_token_loss: correct") == 2


def _nll(logits, targets):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)


@pytest.mark.parametrize("wrong, words", [
    (lambda lg, tk: _nll(lg, tk[:, :-1]).mean(), ["not shifted", "tokens[:, 1:]"]),
    (lambda lg, tk: -jnp.take_along_axis(jax.nn.softmax(lg, -1), tk[:, 1:, None], -1).mean(),
     ["forgot log_softmax"]),
    (lambda lg, tk: _nll(lg, tk[:, 1:]).sum(), ["summed instead", "mean"]),
    (lambda lg, tk: _nll(lg, tk[:, 1:]).sum(1).mean(), ["wrong axis"]),
    (lambda lg, tk: _nll(lg, tk[:, 1:]).mean(0), ["one number", "batch and time"]),
    (lambda lg, tk: -(jax.nn.log_softmax(lg, -1) * jax.nn.one_hot(tk[:, 1:], lg.shape[-1])).mean(),
     ["vocabulary axis"]),
    (lambda lg, tk: -_nll(lg, tk[:, 1:]).mean(), ["minus sign"]),
    (lambda lg, tk: -jnp.take_along_axis(lg, tk[:, 1:, None], -1).mean(), ["raw logits"]),
    (lambda lg, tk: -jnp.take_along_axis(jax.nn.log_softmax(lg, 1), tk[:, 1:, None], -1).mean(),
     ["wrong axis", "axis=-1"]),
])
def test_next_token_loss_names_the_mistake(wrong, words):
    fails_with(checks.check_next_token_loss, wrong, *words)


# ---------------------------------------------------------------- lr_at


def test_lr_at_passes_reference_and_library(capsys):
    checks.check_lr_at(train.lr_at)

    def via_library(step, *, peak_lr, min_lr, warmup_steps, total_steps):
        cfg = train.TrainConfig(steps=total_steps, lr=peak_lr, min_lr=min_lr,
                                warmup_steps=warmup_steps)
        return train.lr_schedule(cfg)(step)

    checks.check_lr_at(via_library)
    assert capsys.readouterr().out.count("✓ lr_at: correct") == 2


def _schedule(warm, decay):
    """Build a schedule from a warmup rule and a decay rule (both functions of the settings)."""
    def lr_at(step, *, peak_lr, min_lr, warmup_steps, total_steps):
        kw = dict(peak_lr=peak_lr, min_lr=min_lr, w=warmup_steps, total=total_steps)
        return warm(step, **kw) if step < warmup_steps else decay(step, **kw)
    return lr_at


def _good_warm(s, peak_lr, min_lr, w, total):
    return peak_lr * s / w


def _good_decay(s, peak_lr, min_lr, w, total):
    p = min((s - w) / (total - w), 1.0)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * p))


@pytest.mark.parametrize("wrong, words", [
    (_schedule(lambda s, peak_lr, min_lr, w, total: peak_lr * (s + 1) / w, _good_decay),
     ["warmup off by one"]),
    (_schedule(lambda s, peak_lr, min_lr, w, total: peak_lr * s / (w - 1), _good_decay),
     ["warmup off by one"]),
    (_schedule(lambda s, peak_lr, min_lr, w, total: peak_lr, _good_decay),
     ["starts at the peak"]),
    (lambda step, *, peak_lr, min_lr, warmup_steps, total_steps: min_lr + 0.5 * (
        peak_lr - min_lr) * (1 + math.cos(math.pi * min(step / total_steps, 1.0))),
     ["no warmup"]),
    (_schedule(_good_warm, lambda s, peak_lr, min_lr, w, total: 0.5 * peak_lr * (
        1 + math.cos(math.pi * min((s - w) / (total - w), 1.0)))), ["decays to 0", "min_lr"]),
    (_schedule(_good_warm, lambda s, peak_lr, min_lr, w, total: min_lr + 0.5 * peak_lr * (
        1 + math.cos(math.pi * min((s - w) / (total - w), 1.0)))), ["peak_lr - min_lr"]),
    (_schedule(_good_warm, lambda s, peak_lr, min_lr, w, total: min_lr + 0.5 * (
        peak_lr - min_lr) * (1 + math.cos(math.pi * min((s - w) / total, 1.0)))),
     ["does not reach min_lr"]),
    (_schedule(_good_warm, lambda s, peak_lr, min_lr, w, total: min_lr + 0.5 * (
        peak_lr - min_lr) * (1 + math.cos(math.pi * (s - w) / (total - w)))),
     ["stay at min_lr", "rises again"]),
    (_schedule(_good_warm, lambda s, peak_lr, min_lr, w, total: peak_lr - (
        peak_lr - min_lr) * min((s - w) / (total - w), 1.0)), ["linear decay"]),
])
def test_lr_at_names_the_mistake(wrong, words):
    fails_with(checks.check_lr_at, wrong, *words)


# ---------------------------------------------------------------- clip_by_global_norm


def test_clip_passes_reference_and_optax(capsys):
    checks.check_clip_by_global_norm(train.clip_by_global_norm)

    def via_optax(grads, max_norm):
        return optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())[0]

    checks.check_clip_by_global_norm(via_optax)
    assert capsys.readouterr().out.count("✓ clip_by_global_norm: correct") == 2


def _norm(grads):
    return jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))


@pytest.mark.parametrize("wrong, words", [
    (lambda g, m: {k: v * jnp.minimum(1.0, m / jnp.linalg.norm(v)) for k, v in g.items()},
     ["each tensor separately", "one norm"]),
    (lambda g, m: jax.tree.map(lambda v: v * m / _norm(g), g), ["scaled the gradients up"]),
    (lambda g, m: jax.tree.map(lambda v: jnp.clip(v, -m, m), g), ["each entry", "jnp.clip"]),
    (lambda g, m: jax.tree.map(lambda v: v * jnp.minimum(1.0, m / _norm(g) ** 2), g),
     ["square root"]),
    (lambda g, m: g, ["unchanged"]),
    (lambda g, m: [v * jnp.minimum(1.0, m / _norm(g)) for v in g.values()], ["same structure"]),
])
def test_clip_names_the_mistake(wrong, words):
    fails_with(checks.check_clip_by_global_norm, wrong, *words)


# ---------------------------------------------------------------- train_step


def test_train_step_passes_reference(capsys):
    checks.check_train_step(train_step)
    assert "✓ train_step: correct" in capsys.readouterr().out


def _step(apply, *, return_old_state=False, loss_after=False):
    def train_step(params, opt_state, x, y, *, loss_of, tx):
        loss, grads = jax.value_and_grad(loss_of)(params, x, y)
        updates, new_state = tx.update(grads, opt_state, params)
        new_params = apply(params, grads, updates)
        if loss_after:
            loss = loss_of(new_params, x, y)
        return new_params, (opt_state if return_old_state else new_state), loss
    return train_step


@pytest.mark.parametrize("wrong, words", [
    (_step(lambda p, g, u: p), ["forgot to apply the updates"]),
    (_step(lambda p, g, u: jax.tree.map(lambda a, b: a - b, p, g)), ["raw gradient"]),
    (_step(lambda p, g, u: jax.tree.map(lambda a, b: a - b, p, u)), ["subtracted the updates"]),
    (_step(lambda p, g, u: u), ["returned the updates"]),
    (_step(lambda p, g, u: jax.tree.map(lambda a, b: a + b, p, u), return_old_state=True), ["old optimizer state"]),
    (_step(lambda p, g, u: jax.tree.map(lambda a, b: a + b, p, u), loss_after=True),
     ["after the update"]),
])
def test_train_step_names_the_mistake(wrong, words):
    fails_with(checks.check_train_step, wrong, *words)


def test_train_step_must_work_under_jit():
    def not_jittable(params, opt_state, x, y, *, loss_of, tx):
        new_params, new_state, loss = train_step(
            params, opt_state, x, y, loss_of=loss_of, tx=tx)
        return new_params, new_state, float(loss)  # fails on a tracer

    fails_with(checks.check_train_step, not_jittable, "jax.jit", "float()")


def test_train_step_wrong_return_shape():
    def two_things(params, opt_state, x, y, *, loss_of, tx):
        return train_step(params, opt_state, x, y, loss_of=loss_of, tx=tx)[:2]

    fails_with(checks.check_train_step, two_things, "three things")
