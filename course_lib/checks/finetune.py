"""Exercises of notebook 06c (fine-tuning and alignment): the instruction-tuning loss on the
response tokens, a LoRA adapter for ``nnx.Linear``, and the DPO loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib.checks._core import Case, Exercise, Mistake, Property, _call, as_number, checker
from course_lib.finetune import LoRALinear, dpo_loss, response_loss

__all__ = ["check_response_loss", "check_lora_linear", "check_dpo_loss"]

# ---------------------------------------------------------------- the SFT loss on the response


def _sft_cases():
    """Sequences of prompt, response and padding, with responses of different lengths."""
    rng = np.random.default_rng(3)
    B, T, V = 3, 8, 7  # tokens (B, T + 1) -> logits (B, T, V)
    cases = []
    for scale, spans in ((2.0, [(3, 6), (2, 8), (5, 7)]), (1.0, [(1, 4), (4, 9), (6, 9)])):
        mask = np.zeros((B, T + 1), bool)
        for b, (start, stop) in enumerate(spans):  # the response: tokens start .. stop - 1
            mask[b, start:stop] = True
        cases.append(Case((jnp.asarray(rng.normal(size=(B, T, V)) * scale, jnp.float32),
                           jnp.asarray(rng.integers(0, V, (B, T + 1)), jnp.int32),
                           jnp.asarray(mask)),
                          note=f"responses of {[b - a for a, b in spans]} tokens"))
    return cases


def _nll(logits, targets):
    """(B, T) -log p(target)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def _masked_mean(values, mask):
    m = mask.astype(jnp.float32)
    return jnp.sum(values * m) / jnp.sum(m)


RESPONSE_LOSS = Exercise(
    "response_loss",
    doc="Check ``fn(logits, tokens, response_mask) -> scalar``, the mean cross-entropy over "
        "the response tokens.",
    reference=response_loss,
    cases=_sft_cases,
    output=as_number, expect="a single number", rtol=1e-4, atol=1e-6,
    shape_hint="The loss is ONE number: the mean over every response token of the batch.",
    mistakes=[
        Mistake("mask not shifted: the targets are tokens[:, 1:], so the mask that selects them "
                "must be shifted the same way, response_mask[:, 1:]. With response_mask[:, :-1] "
                "the loss skips the response's last token (the end token) and scores the last "
                "prompt token instead.",
                lambda lg, tk, m: _masked_mean(_nll(lg, tk[:, 1:]), m[:, :-1])),
        Mistake("targets not shifted: the logits at position t predict token t + 1, so the "
                "targets are tokens[:, 1:], not tokens[:, :-1].",
                lambda lg, tk, m: _masked_mean(_nll(lg, tk[:, :-1]), m[:, 1:])),
        Mistake("targets not shifted: the logits at position t predict token t + 1, so the "
                "targets are tokens[:, 1:], not tokens[:, :-1].",
                lambda lg, tk, m: _masked_mean(_nll(lg, tk[:, :-1]), m[:, :-1])),
        Mistake("prompt tokens counted: you averaged over every position. Multiply the "
                "per-token losses by the (shifted) response mask and divide by the number of "
                "response tokens.", lambda lg, tk, m: _nll(lg, tk[:, 1:]).mean()),
        Mistake("the mask is inverted: you scored the prompt (and the padding) instead of the "
                "response. True in response_mask marks the tokens to learn.",
                lambda lg, tk, m: _masked_mean(_nll(lg, tk[:, 1:]), ~m[:, 1:])),
        Mistake("divided by all B * T positions instead of the number of response tokens: a "
                "batch with short responses would get a small loss (divide by mask.sum()).",
                lambda lg, tk, m: jnp.sum(_nll(lg, tk[:, 1:]) * m[:, 1:]) / m[:, 1:].size),
        Mistake("summed instead of taking the mean over the response tokens.",
                lambda lg, tk, m: jnp.sum(_nll(lg, tk[:, 1:]) * m[:, 1:])),
        Mistake("averaged per sequence first and then over the batch: every response token of "
                "the batch must weigh the same (sum over all masked tokens / their number), or "
                "short responses count more than long ones.",
                lambda lg, tk, m: jnp.mean(jnp.sum(_nll(lg, tk[:, 1:]) * m[:, 1:], axis=1)
                                           / jnp.sum(m[:, 1:], axis=1))),
        Mistake("forgot the minus sign: the loss is the NEGATIVE mean log-probability (>= 0).",
                lambda lg, tk, m: -response_loss(lg, tk, m)),
        Mistake("used the raw logits of the targets: normalise first with "
                "jax.nn.log_softmax(logits, axis=-1).",
                lambda lg, tk, m: _masked_mean(-jnp.take_along_axis(
                    lg, tk[:, 1:, None], axis=-1)[..., 0], m[:, 1:])),
    ],
    otherwise="wrong value.",
    success="{n} batches: the mask shifted with the targets, the mean over the response tokens",
)

# ---------------------------------------------------------------- LoRA adapter

# Cases: (d_in, d_out, rank, alpha, seed): alpha / rank is neither 1 nor its own inverse, so a
# forgotten or inverted scale shows.
_LORA_CASES = ((6, 5, 2, 8.0, 0), (8, 4, 3, 1.5, 1), (5, 7, 1, 4.0, 2))


def _lora_setup(case: Case):
    """The base layer, the input and the adapter weights of a case."""
    d_in, d_out, rank, _, seed = case.args
    base = nnx.Linear(d_in, d_out, rngs=nnx.Rngs(seed))  # with a bias, as nn.Linear has
    base.bias[...] = jax.random.normal(jax.random.key(seed + 50), (d_out,))
    keys = jax.random.split(jax.random.key(seed + 100), 3)
    x = jax.random.normal(keys[0], (4, d_in))
    a = jax.random.normal(keys[1], (d_in, rank))
    b = jax.random.normal(keys[2], (rank, d_out))
    return base, x, a, b


def _lora_outputs(cls, case: Case):
    """Build ``cls(base, rank, alpha, rngs=...)``; its output at initialisation, then with the
    case's A and B written into ``lora_a`` and ``lora_b``: an array (2, N, d_out)."""
    name = "lora_linear"
    d_in, d_out, rank, alpha, _ = case.args
    base, x, a, b = _lora_setup(case)
    layer = cls(base, rank, alpha, rngs=nnx.Rngs(7))
    at_init = _call(name, layer, x)
    for attr, value in (("lora_a", a), ("lora_b", b)):
        var = getattr(layer, attr, None)
        if not isinstance(var, nnx.Variable):
            raise AssertionError(
                f"{name}: your layer has no weight {attr} stored as an nnx.Variable (e.g. "
                f"self.{attr} = nnx.LoRAParam(...) or nnx.Param(...)); found "
                f"{type(var).__name__}. The check writes known values into {attr}.")
        if tuple(var[...].shape) != tuple(value.shape):
            raise AssertionError(
                f"{name}: {attr} has shape {tuple(var[...].shape)}; expected "
                f"{tuple(value.shape)} (A: (d_in, rank), B: (rank, d_out)), for d_in={d_in}, "
                f"d_out={d_out}, rank={rank}.")
        var[...] = value
    return jnp.stack([jnp.asarray(at_init), jnp.asarray(_call(name, layer, x))])


def _lora_show(case: Case, got, want) -> str:
    d_in, d_out, rank, alpha, _ = case.args
    line = f"\n  for d_in={d_in}, d_out={d_out}, rank={rank}, alpha={alpha}"
    if np.shape(got) == np.shape(want):
        line += (f": largest difference {np.abs(got[0] - want[0]).max():.3g} at initialisation, "
                 f"{np.abs(got[1] - want[1]).max():.3g} with the given A and B")
    return line


def _lora_wrong(forward=None, init_b=None, init_a=None):
    """A wrong adapter: the library's class with another forward pass or initialisation."""

    class Wrong(LoRALinear):
        def __init__(self, base, rank, alpha, *, rngs):
            super().__init__(base, rank, alpha, rngs=rngs)
            if init_b is not None:
                self.lora_b = nnx.LoRAParam(init_b(rngs, self.lora_b[...].shape))
            if init_a is not None:
                self.lora_a = nnx.LoRAParam(init_a(self.lora_a[...].shape))

        def __call__(self, x):
            if forward is None:
                return super().__call__(x)
            return forward(self, x)

    return Wrong


def _delta(layer, x):
    return x @ layer.lora_a[...] @ layer.lora_b[...]


def _lora_facts(probe):
    """What the properties look at: the adapter's A at initialisation, for the first case."""
    case = Case(_LORA_CASES[0])
    d_in, d_out, rank, alpha, _ = case.args
    base, *_ = _lora_setup(case)
    layer = _call("lora_linear", probe.fn, base, rank, alpha, rngs=nnx.Rngs(7))
    return {"a": np.asarray(layer.lora_a[...])}


LORA_LINEAR = Exercise(
    "lora_linear",
    doc="Check a LoRA layer class ``cls(base, rank, alpha, *, rngs)`` with weights ``lora_a`` "
        "(d_in, rank) and ``lora_b`` (rank, d_out): y = base(x) + x @ A @ B * alpha / rank.",
    reference=LoRALinear,
    cases=lambda: [Case(args) for args in _LORA_CASES],
    call=_lora_outputs, show=_lora_show,
    expect="the layer's outputs (N, d_out)", rtol=1e-4, atol=1e-5,
    mistakes=[
        Mistake("B is not zero at initialisation: the adapted layer must compute exactly what "
                "the base layer does before training (B = zeros((rank, d_out)); only A is "
                "random).",
                _lora_wrong(init_b=lambda rngs, shape: jax.random.normal(rngs.params(), shape)),
                when=lambda got, want, case: not np.allclose(got[0], want[0], atol=1e-5)
                and np.allclose(got[1], want[1], rtol=1e-4, atol=1e-5)),
        Mistake("scale forgotten: the low-rank change is multiplied by alpha / rank.",
                _lora_wrong(lambda m, x: m.base(x) + _delta(m, x))),
        Mistake("scale inverted: the change is multiplied by alpha / rank, not rank / alpha.",
                _lora_wrong(lambda m, x: m.base(x) + _delta(m, x) * m.rank / m.alpha)),
        Mistake("base not added: the layer returns base(x) PLUS the low-rank change; yours "
                "returns the change alone.", _lora_wrong(lambda m, x: _delta(m, x) * m.scale)),
        Mistake("the base layer's bias is missing: call the base layer, base(x), rather than "
                "x @ base.kernel.", _lora_wrong(
                    lambda m, x: x @ m.base.kernel[...] + _delta(m, x) * m.scale)),
    ],
    properties=[
        Property("A is zero at initialisation too: with A = 0 and B = 0 the gradients of both "
                 "are zero and the adapter never learns. Draw A at random (e.g. normal with std "
                 "1 / sqrt(d_in)) and keep B at zero.",
                 broken=lambda facts: bool(np.all(facts["a"] == 0)),
                 wrong=_lora_wrong(init_a=lambda shape: jnp.zeros(shape))),
    ],
    facts=_lora_facts,
    success="{n} layers: the base layer's output at first, y = base(x) + x A B alpha/r after",
)

# ---------------------------------------------------------------- DPO


def _dpo_cases():
    rng = np.random.default_rng(9)
    cases = []
    for beta in (0.1, 0.5, 2.0):
        pc, pr, rc, rr = (jnp.asarray(rng.normal(-6.0, 2.0, 5), jnp.float32) for _ in range(4))
        cases.append(Case((pc, pr, rc, rr, beta), note=f"5 pairs, beta={beta}"))
    return cases


def _margins(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


DPO_LOSS = Exercise(
    "dpo_loss",
    doc="Check ``fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, "
        "ref_rejected_logps, beta) -> scalar``.",
    reference=dpo_loss,
    cases=_dpo_cases,
    output=as_number, expect="a single number", rtol=1e-4, atol=1e-6,
    shape_hint="Average over the pairs: the loss is one number.",
    mistakes=[
        Mistake("sign flipped: the loss must fall when the policy raises the chosen answer "
                "relative to the rejected one: -log sigmoid(beta * (chosen log-ratio - "
                "rejected log-ratio)).",
                lambda pc, pr, rc, rr, b: -jnp.mean(jax.nn.log_sigmoid(
                    -b * _margins(pc, pr, rc, rr)))),
        Mistake("reference terms missing: each answer's log-probability is measured against "
                "the reference model, log p_policy - log p_ref. Without them the loss only "
                "pushes the two answers apart, however far from the reference.",
                lambda pc, pr, rc, rr, b: -jnp.mean(jax.nn.log_sigmoid(b * (pc - pr)))),
        Mistake("beta outside the sigmoid: beta scales the reward margin inside, "
                "-log sigmoid(beta * margin), not the loss outside.",
                lambda pc, pr, rc, rr, b: -b * jnp.mean(jax.nn.log_sigmoid(
                    _margins(pc, pr, rc, rr)))),
        Mistake("beta forgotten: the margin is multiplied by beta inside the sigmoid.",
                lambda pc, pr, rc, rr, b: -jnp.mean(jax.nn.log_sigmoid(
                    _margins(pc, pr, rc, rr)))),
        Mistake("the reference log-probabilities were added instead of subtracted: the "
                "implicit reward is beta * (log p_policy - log p_ref).",
                lambda pc, pr, rc, rr, b: -jnp.mean(jax.nn.log_sigmoid(
                    b * ((pc + rc) - (pr + rr))))),
        Mistake("summed over the pairs instead of taking the mean.",
                lambda pc, pr, rc, rr, b: -jnp.sum(jax.nn.log_sigmoid(
                    b * _margins(pc, pr, rc, rr)))),
        Mistake("used sigmoid instead of log-sigmoid: the loss is -log sigmoid(...), the "
                "negative log-likelihood that the chosen answer wins.",
                lambda pc, pr, rc, rr, b: -jnp.mean(jax.nn.sigmoid(
                    b * _margins(pc, pr, rc, rr)))),
        Mistake("forgot the minus sign: the loss is -log sigmoid(...), which is >= 0.",
                lambda pc, pr, rc, rr, b: jnp.mean(jax.nn.log_sigmoid(
                    b * _margins(pc, pr, rc, rr)))),
    ],
    otherwise="wrong value.",
    success="{n} cases with beta = 0.1, 0.5 and 2",
)

check_response_loss = checker(RESPONSE_LOSS)
check_lora_linear = checker(LORA_LINEAR)
check_dpo_loss = checker(DPO_LOSS)
