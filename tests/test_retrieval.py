"""course_lib.retrieval: padding and pooling, embeddings, scoring, search, recall."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from course_lib import model as M
from course_lib import retrieval as R

CFG = M.GPTConfig(vocab_size=30, block_size=16, n_layers=2, n_heads=2, d_model=32)


@pytest.fixture(scope="module")
def gpt():
    return M.GPT(CFG, rngs=nnx.Rngs(0))


def random_texts(n, seed=0, lo=2, hi=16):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, 30, int(rng.integers(lo, hi + 1)))) for _ in range(n)]


# ---------------------------------------------------------------- padding and pooling


def test_pad_batch():
    ids, mask = R.pad_batch([[3, 4, 5], [7]], pad_id=9)
    np.testing.assert_array_equal(ids, [[3, 4, 5], [7, 9, 9]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0]])
    assert ids.dtype == np.int32 and mask.dtype == bool
    assert R.pad_batch([[1]], length=4)[0].shape == (1, 4)
    with pytest.raises(ValueError, match="empty"):
        R.pad_batch([[1], []])
    with pytest.raises(ValueError, match="block_size"):
        R.pad_batch([[1, 2, 3]], length=2)
    with pytest.raises(ValueError, match="no sequences"):
        R.pad_batch([])


def test_mean_pool_ignores_padding():
    h = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)  # (B, T, C)
    mask = jnp.array([[True, True, False], [True, False, False]])
    out = R.mean_pool(h, mask)
    np.testing.assert_allclose(out, [[1.0, 2.0], [6.0, 7.0]])
    h2 = h.at[:, 2].set(1e6)  # change only padded positions: nothing changes
    np.testing.assert_allclose(R.mean_pool(h2, mask), out)


def test_mean_pool_empty_row_is_zero_and_shapes_checked():
    out = R.mean_pool(jnp.ones((2, 3, 4)), jnp.array([[1, 1, 1], [0, 0, 0]]))
    np.testing.assert_allclose(out[1], 0.0)
    with pytest.raises(ValueError, match="mask"):
        R.mean_pool(jnp.ones((2, 3, 4)), jnp.ones((2, 4)))


def test_mean_pool_under_jit():
    h, mask = jnp.ones((2, 3, 4)), jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    np.testing.assert_allclose(jax.jit(R.mean_pool)(h, mask), 1.0)


# ---------------------------------------------------------------- embeddings and scores


def test_embed_matches_pooling_each_text_alone(gpt):
    texts = random_texts(7)
    emb = R.embed(gpt, texts, batch_size=3)  # batches of 3, the last one padded
    assert emb.shape == (7, CFG.d_model)
    i = int(np.argmin([len(t) for t in texts]))  # the most padded text
    alone = gpt.hidden_states(jnp.asarray([texts[i]]))[0].mean(0)  # no padding at all
    np.testing.assert_allclose(emb[i], alone, rtol=1e-4, atol=1e-5)


def test_embed_rejects_long_and_missing_texts(gpt):
    with pytest.raises(ValueError, match="block_size"):
        R.embed(gpt, [[1] * (CFG.block_size + 1)])
    with pytest.raises(ValueError, match="no texts"):
        R.embed(gpt, [])
    with pytest.raises(ValueError, match="empty"):
        R.embed(gpt, [[1, 2], []])


def manual_logprobs(gpt, texts):
    """log p(token t | tokens < t) for t >= 1 of each text (one forward pass over the texts
    right-padded with zeros: in a causal model the padding cannot change earlier positions)."""
    L = max(len(t) for t in texts)
    ids = jnp.asarray([t + [0] * (L - len(t)) for t in texts])
    logp = np.asarray(jax.nn.log_softmax(gpt(ids[:, :-1]), -1))  # (N, L-1, V)
    return [logp[i, np.arange(len(t) - 1), t[1:]] for i, t in enumerate(texts)]


def test_mean_logprob_matches_manual(gpt):
    texts = random_texts(3, seed=1, lo=8)
    manual = manual_logprobs(gpt, texts)
    lp = R.mean_logprob(gpt, texts, skip=3, batch_size=2)  # 2 batches, the last one padded
    np.testing.assert_allclose(lp, [m[2:].mean() for m in manual], rtol=1e-4)  # tokens 3..
    lp = R.mean_logprob(gpt, texts, skip=[2, 4, 6], batch_size=2)  # one skip per text
    np.testing.assert_allclose(lp, [m[s - 1:].mean() for m, s in zip(manual, [2, 4, 6])],
                               rtol=1e-4)
    np.testing.assert_allclose(R.mean_logprob(gpt, texts, skip=0, batch_size=2),
                               [m.mean() for m in manual], rtol=1e-4)


def test_mean_logprob_errors(gpt):
    with pytest.raises(ValueError, match="no token to score"):
        R.mean_logprob(gpt, [[1, 2, 3]], skip=3)
    with pytest.raises(ValueError, match="no token to score"):
        R.mean_logprob(gpt, [[1]])
    with pytest.raises(ValueError, match="block_size"):
        R.mean_logprob(gpt, [[1] * (CFG.block_size + 1)])


def test_bag_of_chars():
    out = R.bag_of_chars([[0, 2, 2], [1]], vocab_size=4)
    np.testing.assert_array_equal(out, [[1, 0, 2, 0], [0, 1, 0, 0]])
    a, b = R.bag_of_chars([[1, 2, 3, 1], [3, 1, 1, 2]], 5)  # same characters, another order
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="outside"):
        R.bag_of_chars([[5]], vocab_size=4)


# ---------------------------------------------------------------- search and recall


def test_cosine_top_k_against_brute_force():
    rng = np.random.default_rng(3)
    keys = rng.normal(size=(20, 6)) * rng.uniform(0.1, 10, (20, 1))
    queries = rng.normal(size=(5, 6))
    idx, sims = R.cosine_top_k(queries, keys, 4)
    cos = np.array([[q @ k / np.linalg.norm(q) / np.linalg.norm(k) for k in keys]
                    for q in queries])
    np.testing.assert_array_equal(idx, np.argsort(-cos, axis=1)[:, :4])
    np.testing.assert_allclose(sims, np.take_along_axis(cos, idx, 1), rtol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)  # best first


def test_cosine_top_k_finds_each_key_itself():
    keys = np.random.default_rng(4).normal(size=(10, 3))
    idx, _ = R.cosine_top_k(keys * 7.0, keys, 1)  # scaled copies: cosine 1 with themselves
    np.testing.assert_array_equal(idx[:, 0], np.arange(10))


def test_cosine_top_k_errors():
    with pytest.raises(ValueError, match="width"):
        R.cosine_top_k(np.ones((2, 3)), np.ones((4, 5)), 1)
    with pytest.raises(ValueError, match="k=5"):
        R.cosine_top_k(np.ones((2, 3)), np.ones((4, 3)), 5)


def test_normalize_unit_rows_and_zero_rows():
    out = np.asarray(R.normalize(np.array([[3.0, 4.0], [0.0, 0.0]])))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_recall_at_k():
    ranked = np.array([[3, 1, 2], [0, 2, 1], [2, 0, 3]])
    targets = np.array([3, 1, 1])
    assert R.recall_at_k(ranked, targets, 1) == pytest.approx(1 / 3)
    assert R.recall_at_k(ranked, targets, 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k=4"):
        R.recall_at_k(ranked, targets, 4)
    with pytest.raises(ValueError, match="targets"):
        R.recall_at_k(ranked, targets[:2], 1)
