"""Notebook 04's module checks: the learner's attention layer and GPT. The right classes pass;
every declared mistake, built as a wrong class, is named by its own hint."""

import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from course_lib import model
from course_lib.checks import modules as M


class GoodAttention(nnx.Module):
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


def wrong_attention(**mistake):
    class Wrong(GoodAttention):
        def __call__(self, x):
            return M._attention(x, self.q.kernel[...], self.k.kernel[...], self.v.kernel[...],
                                self.proj.kernel[...], self.n_heads, **mistake)
    return Wrong


class GoodGPT(model.GPT):  # the library's GPT, but any module with its names would do
    pass


def wrong_gpt(**mistake):
    class Wrong(model.GPT):
        def __call__(self, idx):
            return M._gpt(self, idx, **mistake)
    return Wrong


def test_right_modules_pass(capsys):
    M.check_causal_self_attention(GoodAttention)
    M.check_causal_self_attention(lambda cfg, *, rngs: model.Attention(cfg, causal=True, rngs=rngs))
    M.check_gpt_module(GoodGPT)
    M.check_block_module(model.Block)
    assert capsys.readouterr().out.count("✓") == 4


@pytest.mark.parametrize("mistake,hint", M._ATTENTION_MISTAKES, ids=lambda m: str(m)[:30])
def test_every_attention_mistake_is_named(mistake, hint):
    with pytest.raises(AssertionError) as err:
        M.check_causal_self_attention(wrong_attention(**mistake))
    assert hint in str(err.value)


def wrong_block(**mistake):
    class Wrong(model.Block):
        def __call__(self, x):
            return M._block(self, x, 2, **mistake)
    return Wrong


@pytest.mark.parametrize("mistake,hint", M._BLOCK_MISTAKES, ids=lambda m: str(m)[:30])
def test_every_block_mistake_is_named(mistake, hint):
    with pytest.raises(AssertionError) as err:
        M.check_block_module(wrong_block(**mistake))
    assert hint in str(err.value)


@pytest.mark.parametrize("mistake,hint", M._GPT_MISTAKES, ids=lambda m: str(m)[:30])
def test_every_gpt_mistake_is_named(mistake, hint):
    with pytest.raises(AssertionError) as err:
        M.check_gpt_module(wrong_gpt(**mistake))
    assert hint in str(err.value)


def test_names_stubs_and_untied_heads_get_hints():
    class Fused(nnx.Module):  # one (C, 3C) matrix instead of q, k, v: the names differ
        def __init__(self, cfg, *, rngs):
            self.qkv = nnx.Linear(cfg.d_model, 3 * cfg.d_model, use_bias=False, rngs=rngs)
            self.proj = nnx.Linear(cfg.d_model, cfg.d_model, use_bias=False, rngs=rngs)

    with pytest.raises(AssertionError, match="missing k.kernel, q.kernel, v.kernel"):
        M.check_causal_self_attention(Fused)

    class Stub(nnx.Module):
        def __init__(self, cfg, *, rngs):
            raise NotImplementedError

    with pytest.raises(AssertionError, match="not done yet"):
        M.check_gpt_module(Stub)

    class Untied(model.GPT):
        def __init__(self, cfg, *, rngs):
            super().__init__(cfg, rngs=rngs)
            self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, rngs=rngs)

    with pytest.raises(AssertionError, match="tie it to the token table"):
        M.check_gpt_module(Untied)

    class Hidden(model.GPT):
        def __call__(self, idx):
            return self.hidden_states(idx)

    with pytest.raises(AssertionError, match="returned the hidden states"):
        M.check_gpt_module(Hidden)
