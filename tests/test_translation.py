"""The EN→ZH task (course_lib.translation): vocabularies and arrays, training through train.fit,
translating; and beam search (course_lib.seq2seq)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from course_lib import seq2seq as S
from course_lib import train
from course_lib import translation as T


def test_vocab_and_encoding_round_trip():
    data = T.build_data(200, 30, 40, seed=0)
    assert data.src_vocab.size == len(data.src_vocab.chars) + 3
    for s, t in data.train_pairs[:50] + data.test_pairs:
        src = T.encode_sources(data.src_vocab, [s], data.src_len)
        tin, tout = T.encode_targets(data.tgt_vocab, [t], data.tgt_len)
        assert data.src_vocab.decode(src[0]) == s
        assert data.tgt_vocab.decode(tout[0]) == t
        assert tin[0, 0] == T.BOS and data.tgt_vocab.decode(tin[0, 1:]) == t
        n = len(t)
        assert tout[0, n] == T.EOS and (tout[0, n + 1:] == S.PAD).all()
        np.testing.assert_array_equal(tin[0, 1:n + 1], tout[0, :n])  # shifted by one
    assert data.train.src.shape == (200, data.src_len)
    assert data.train.tgt_in.shape == data.train.tgt_out.shape == (200, data.tgt_len - 1)
    assert data.val.src.shape == (30, data.src_len) and len(data.test_pairs) == 40
    np.testing.assert_array_equal(data.arrays(data.val_pairs).tgt_out, data.val.tgt_out)
    with pytest.raises(ValueError, match="n_val must be an integer >= 1"):
        T.build_data(200, 0, 40)


def test_encoding_errors_name_the_problem():
    vocab = T.CharVocab.from_texts(["abc"])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("abz")
    with pytest.raises(ValueError, match="length=2"):
        T.encode_sources(vocab, ["abc"], 2)
    with pytest.raises(ValueError, match="BOS and EOS"):
        T.encode_targets(vocab, ["abc"], 4)


def test_exact_match():
    assert T.exact_match(["一", "二"], ["一", "三"]) == 0.5
    with pytest.raises(ValueError, match="as many"):
        T.exact_match(["一"], ["一", "二"])


# ---------------------------------------------------------------- a tiny model trains through fit

TCFG = train.TrainConfig(steps=150, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                         weight_decay=0.01, beta2=0.98, eval_every=50, eval_batches=4,
                         steps_per_call=50)
TASK = dict(sample_batch=T.random_batch, loss=T.loss, progress=False)


def tiny_model(data, seed=0, dropout=0.0):
    cfg = S.Seq2SeqConfig(data.src_vocab.size, data.tgt_vocab.size, data.src_len, data.tgt_len,
                          n_layers=1, n_heads=2, d_model=32, dropout=dropout)
    return S.Seq2Seq(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def trained():
    data = T.build_data(2000, 100, 50, seed=0, max_digits=3)
    state = train.fit(tiny_model(data), data.train, data.val, TCFG, **TASK)
    return state.model, data, state.history


def test_a_tiny_model_learns_with_a_validation_curve(trained):
    model, data, h = trained
    assert len(h.train_loss) == 150 and np.isfinite(h.train_loss).all()
    assert np.mean(h.train_loss[-20:]) < 0.6 * np.mean(h.train_loss[:20])
    assert h.val_step == [0, 50, 100, 150] and h.val_loss[-1] < 0.6 * h.val_loss[0]
    assert h.tokens_per_second > 0
    out = T.translate(model, data, [s for s, _ in data.test_pairs[:10]])
    assert len(out) == 10 and all(isinstance(o, str) for o in out)


def test_random_batch_and_loss():
    data = T.build_data(50, 5, 5, seed=1, max_digits=2)
    (src, tgt_in), tgt_out = T.random_batch(data.train, 8, jax.random.PRNGKey(0))
    assert src.shape == (8, data.src_len) and tgt_in.shape == tgt_out.shape == (8, data.tgt_len - 1)
    rows = [int(np.flatnonzero((data.train.src == np.asarray(s)).all(1))[0]) for s in src]
    np.testing.assert_array_equal(tgt_out, data.train.tgt_out[rows])  # whole pairs, kept together
    model = tiny_model(data)
    want = S.masked_loss(model(src, tgt_in), tgt_out)
    assert float(T.loss(model, (src, tgt_in), tgt_out)) == pytest.approx(float(want))


def test_the_translator_resumes_exactly_from_a_checkpoint(tmp_path):
    data = T.build_data(500, 50, 10, seed=2, max_digits=2)
    cfg = dataclasses.replace(TCFG, steps=20, eval_every=10, steps_per_call=10)
    full = train.fit(tiny_model(data, dropout=0.1), data.train, data.val, cfg, **TASK)
    train.fit(tiny_model(data, dropout=0.1), data.train, data.val, cfg, steps=10,
              checkpoint_dir=tmp_path, **TASK)
    resumed = train.restore_checkpoint(tmp_path, tiny_model(data, seed=7, dropout=0.1))
    resumed = train.fit(resumed, data.train, data.val, **TASK)
    np.testing.assert_array_equal(resumed.history.train_loss, full.history.train_loss)
    np.testing.assert_array_equal(resumed.history.val_loss, full.history.val_loss)


# ---------------------------------------------------------------- beam search


def _cut(ids, eos=T.EOS):
    """Rows of ids up to and including the first EOS, as tuples."""
    out = []
    for row in np.asarray(ids).tolist():
        out.append(tuple(row[: row.index(eos) + 1]) if eos in row else tuple(row))
    return out


def test_beam_of_width_one_is_greedy(trained):
    model, data, _ = trained
    src = jnp.asarray(T.encode_sources(data.src_vocab, [s for s, _ in data.test_pairs],
                                       data.src_len))
    greedy = S.greedy_decode(model, src, bos=T.BOS, max_len=data.tgt_len)
    beam, score = S.beam_search(model, src, bos=T.BOS, eos=T.EOS, max_len=data.tgt_len,
                                beam_size=1)
    assert _cut(beam) == _cut(greedy)
    np.testing.assert_allclose(score, S.sequence_logprob(model, src, greedy, eos=T.EOS),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["trained", "untrained"])
def test_beam_finds_sequences_at_least_as_probable_as_greedy(trained, which):
    model, data, _ = trained
    if which == "untrained":
        model = S.Seq2Seq(model.cfg, rngs=nnx.Rngs(1))
        model.eval()
    src = jnp.asarray(T.encode_sources(data.src_vocab, [s for s, _ in data.test_pairs],
                                       data.src_len))
    greedy = S.greedy_decode(model, src, bos=T.BOS, max_len=data.tgt_len)
    beam, score = S.beam_search(model, src, bos=T.BOS, eos=T.EOS, max_len=data.tgt_len,
                                beam_size=4)
    lp_greedy = np.asarray(S.sequence_logprob(model, src, greedy, eos=T.EOS))
    lp_beam = np.asarray(S.sequence_logprob(model, src, beam, eos=T.EOS))
    np.testing.assert_allclose(score, lp_beam, rtol=1e-4, atol=1e-4)  # its score is right
    # Not guaranteed for every sentence (greedy's prefix can drop out of a beam of fixed width),
    # but nearly always, and on average.
    assert (lp_beam >= lp_greedy - 1e-4).mean() >= 0.9 and lp_beam.mean() >= lp_greedy.mean()
    assert (np.asarray(beam)[:, 0] == T.BOS).all()


def test_beam_search_rejects_a_bad_width(trained):
    model, data, _ = trained
    src = jnp.ones((1, data.src_len), jnp.int32)
    with pytest.raises(ValueError, match="beam_size"):
        S.beam_search(model, src, bos=T.BOS, eos=T.EOS, max_len=4, beam_size=0)


def test_translate_batches_give_the_same_answers(trained):
    model, data, _ = trained
    sources = [s for s, _ in data.test_pairs[:7]]
    assert T.translate(model, data, sources, batch_size=3) == T.translate(model, data, sources)
