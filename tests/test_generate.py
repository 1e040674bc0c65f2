"""Generation: cached = uncached, cropping, sampling filters, fresh keys, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from course_lib import generate as G
from course_lib import model as M

CFG = M.GPTConfig(vocab_size=40, block_size=24, n_layers=2, n_heads=2, d_model=32)


@pytest.fixture(scope="module")
def gpt():
    m = M.GPT(CFG, rngs=nnx.Rngs(0))
    # Sharpen the random model so greedy choices are not near-ties.
    nnx.update(m, jax.tree.map(lambda p: p * 4.0, nnx.state(m, nnx.Param)))
    return m


def prompts(B=3, T=5, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, 40)


def test_cached_greedy_equals_recomputing_the_prefix(gpt):
    p = prompts()
    a = G.generate(gpt, p, 19, key=jax.random.PRNGKey(0), temperature=0.0)
    b = G.generate(gpt, p, 19, key=jax.random.PRNGKey(0), temperature=0.0, use_cache=False)
    assert a.shape == (3, 24)
    np.testing.assert_array_equal(a, b)


def test_cached_sampling_equals_uncached_sampling_with_the_same_key(gpt):
    p = prompts()
    kw = dict(key=jax.random.PRNGKey(5), temperature=0.8, top_k=10)
    np.testing.assert_array_equal(G.generate(gpt, p, 15, **kw),
                                  G.generate(gpt, p, 15, use_cache=False, **kw))


def test_long_prompt_is_cropped_and_kept(gpt):
    p = prompts(2, 40)
    out = G.generate(gpt, p, 3, key=jax.random.PRNGKey(0), temperature=0.0)
    assert out.shape == (2, 43)
    np.testing.assert_array_equal(out[:, :40], p)
    cropped = G.generate(gpt, p[:, -24:], 3, key=jax.random.PRNGKey(0), temperature=0.0)
    np.testing.assert_array_equal(out[:, 40:], cropped[:, 24:])


def test_generation_past_the_context_runs(gpt):
    out = G.generate(gpt, prompts(1, 5), 60, key=jax.random.PRNGKey(0))
    assert out.shape == (1, 65) and int(out.max()) < 40


def test_fresh_key_every_step():
    # A model with uniform predictions: with one key reused, every step would be the same.
    m = M.GPT(CFG, rngs=nnx.Rngs(0))
    nnx.update(m, jax.tree.map(jnp.zeros_like, nnx.state(m, nnx.Param)))
    out = G.generate(m, prompts(1, 1), 40, key=jax.random.PRNGKey(0))
    assert len(set(np.asarray(out[0, 1:]).tolist())) > 10


def test_top_k_filter():
    logits = jnp.array([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = G.filter_top_k(logits, 2)
    np.testing.assert_array_equal(jnp.isfinite(kept), [[False, True, False, True, False]])


def test_top_p_filter_keeps_the_nucleus():
    probs = jnp.array([[0.05, 0.5, 0.3, 0.15]])
    kept = jnp.isfinite(G.filter_top_p(jnp.log(probs), 0.7))
    np.testing.assert_array_equal(kept, [[False, True, True, False]])  # 0.5 + 0.3 >= 0.7
    kept = jnp.isfinite(G.filter_top_p(jnp.log(probs), 0.01))
    np.testing.assert_array_equal(kept, [[False, True, False, False]])  # the top token stays


def test_samples_stay_inside_top_k(gpt):
    out = G.generate(gpt, prompts(8, 3), 10, key=jax.random.PRNGKey(2), top_k=1)
    greedy = G.generate(gpt, prompts(8, 3), 10, key=jax.random.PRNGKey(2), temperature=0.0)
    np.testing.assert_array_equal(out, greedy)


def test_next_token_probs_sum_to_one():
    logits = jax.random.normal(jax.random.PRNGKey(0), (40,))
    for kw in (dict(), dict(temperature=0.5), dict(top_k=5), dict(top_p=0.9), dict(temperature=0)):
        np.testing.assert_allclose(G.next_token_probs(logits, **kw).sum(), 1.0, atol=1e-6)


def test_clear_errors(gpt):
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="batch, seq"):
        G.generate(gpt, jnp.array([1, 2, 3]), 5, key=key)
    with pytest.raises(ValueError, match="empty"):
        G.generate(gpt, jnp.zeros((1, 0), jnp.int32), 5, key=key)
    with pytest.raises(ValueError, match="top_k"):
        G.generate(gpt, prompts(), 5, key=key, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        G.generate(gpt, prompts(), 5, key=key, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        G.generate(gpt, prompts(), 5, key=key, temperature=-1)


@pytest.mark.parametrize("n_new", [1, 3, 30])
def test_short_and_long_runs_with_the_cache(gpt, n_new):
    # Prompt + new tokens shorter than half the context used to break the cache-refill branch.
    p = prompts(2, 4)
    a = G.generate(gpt, p, n_new, key=jax.random.PRNGKey(0), temperature=0.0)
    b = G.generate(gpt, p, n_new, key=jax.random.PRNGKey(0), temperature=0.0, use_cache=False)
    assert a.shape == (2, 4 + n_new)
    if 4 + n_new <= CFG.block_size:
        np.testing.assert_array_equal(a, b)
