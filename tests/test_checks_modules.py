"""Notebook 04's module checks (the learner's attention layer, block and GPT as nnx.Module
classes). Every declared mistake is walked by test_checks_declared.py; here: a learner's own
class passes, and the messages that come before any comparison (names, stubs, an untied output
layer, hidden states instead of logits)."""

import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from course_lib import checks, model


class Attention(nnx.Module):  # written the way notebook 04's solution is
    def __init__(self, cfg, *, rngs):
        C = cfg.d_model
        self.n_heads = cfg.n_heads
        self.q, self.k, self.v, self.proj = (nnx.Linear(C, C, use_bias=False, rngs=rngs)
                                             for _ in range(4))

    def __call__(self, x):
        B, T, C = x.shape
        H, D = self.n_heads, C // self.n_heads
        q, k, v = (f(x).reshape(B, T, H, D) for f in (self.q, self.k, self.v))
        s = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
        w = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf), -1)
        return self.proj(jnp.einsum("bhts,bshd->bthd", w, v).reshape(B, T, C))


def test_a_learners_own_classes_pass(capsys):
    checks.check_causal_self_attention(Attention)
    checks.check_block_module(model.Block)
    checks.check_gpt_module(model.GPT)
    assert capsys.readouterr().out.count("✓") == 3


def test_names_stubs_untied_heads_and_hidden_states_get_hints():
    class Fused(nnx.Module):  # one (C, 3C) matrix instead of q, k, v: the names differ
        def __init__(self, cfg, *, rngs):
            self.qkv = nnx.Linear(cfg.d_model, 3 * cfg.d_model, use_bias=False, rngs=rngs)
            self.proj = nnx.Linear(cfg.d_model, cfg.d_model, use_bias=False, rngs=rngs)

    with pytest.raises(AssertionError, match="missing k.kernel, q.kernel, v.kernel"):
        checks.check_causal_self_attention(Fused)

    class Stub(nnx.Module):
        def __init__(self, cfg, *, rngs):
            raise NotImplementedError

    with pytest.raises(AssertionError, match="not done yet"):
        checks.check_gpt_module(Stub)

    class Untied(model.GPT):
        def __init__(self, cfg, *, rngs):
            super().__init__(cfg, rngs=rngs)
            self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, rngs=rngs)

    with pytest.raises(AssertionError, match="tie it to the token table"):
        checks.check_gpt_module(Untied)

    class Crashes(model.Block):
        def __call__(self, x):
            return self.attn(x, x, x)  # a wrong call: the message names the crash

    with pytest.raises(AssertionError, match="your function raised TypeError"):
        checks.check_block_module(Crashes)
