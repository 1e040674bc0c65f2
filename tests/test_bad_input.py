"""Bad input gets a clear error naming the problem and the fix, never NaN or a silent wrong
answer: token ids outside the vocabulary, NaN or infinite sampling settings, empty or non-text
tokenizer input, bad training settings. Also: every module is reachable as course_lib.<name>."""

import dataclasses
import importlib
import json
import math
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import course_lib
from course_lib import data as D
from course_lib import generate as G
from course_lib import metrics
from course_lib import model as M
from course_lib import recurrent as R
from course_lib import seq2seq as S
from course_lib import tokenizers as TK
from course_lib import train as T

V = 20
CFG = M.GPTConfig(vocab_size=V, block_size=8, n_layers=1, n_heads=2, d_model=16)
SCFG = S.Seq2SeqConfig(src_vocab_size=12, tgt_vocab_size=15, src_len=6, tgt_len=5, n_layers=1,
                       n_heads=2, d_model=16)
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def gpt():
    m = M.GPT(CFG, rngs=nnx.Rngs(0))
    m.eval()
    return m


@pytest.fixture(scope="module")
def s2s():
    return S.Seq2Seq(SCFG, rngs=nnx.Rngs(0))


def good_ids(B=2, T=5, vocab=V):
    return jnp.arange(B * T).reshape(B, T) % vocab


def with_id(value, row=1, pos=3, B=2, T=5, vocab=V):
    return good_ids(B, T, vocab).at[row, pos].set(value)


def assert_names_id(err, value, where, vocab):
    """The message names the bad id, where it sits, the vocabulary size and the fix."""
    msg = str(err.value)
    assert f"{value} at {where}" in msg, msg
    assert f"vocab_size={vocab}" in msg and f"0..{vocab - 1}" in msg, msg
    assert "tokenizer" in msg or "same vocabulary" in msg, msg


# ---------------------------------------------------------------- ids outside the vocabulary


@pytest.mark.parametrize("bad", [V, V + 7, -1])
def test_gpt_forward_rejects_ids_outside_the_vocabulary(gpt, bad):
    with pytest.raises(ValueError) as e:
        gpt(with_id(bad))
    assert_names_id(e, bad, "row 1, position 3", V)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt.hidden_states(with_id(bad))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt.decode(with_id(bad), gpt.init_cache(2), 0)


def test_ids_at_the_edges_of_the_vocabulary_pass(gpt):
    x = good_ids().at[0, 0].set(0).at[1, 4].set(V - 1)
    assert gpt(x).shape == (2, 5, V)


def test_the_message_lists_a_few_bad_ids_and_counts_the_rest(gpt):
    x = good_ids().at[0].set(jnp.arange(V, V + 5))
    with pytest.raises(ValueError, match=r"Found 5 id\(s\).*and 2 more") as e:
        gpt(x)
    assert f"{V} at row 0, position 0; {V + 1} at row 0, position 1" in str(e.value)


def test_no_check_while_tracing_so_compiled_code_costs_nothing(gpt):
    # Inside jit the ids have no values: the check is skipped (and nothing is added to the
    # compiled program), so a jitted forward pass accepts what the eager one rejects.
    out = nnx.jit(lambda m, x: m(x))(gpt, with_id(V))
    assert out.shape == (2, 5, V)
    jaxpr = str(jax.make_jaxpr(lambda x: M.check_ids(x, V) or x)(good_ids()))
    assert "callback" not in jaxpr and "reduce" not in jaxpr


def test_recurrent_forward_rejects_bad_ids():
    m = R.RecurrentLM(R.RNNConfig(vocab_size=V, block_size=8, d_model=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as e:
        m(with_id(-2, row=0, pos=1))
    assert_names_id(e, -2, "row 0, position 1", V)


def test_seq2seq_eager_entry_points_reject_bad_ids(s2s):
    src, tgt = good_ids(2, 6, 12), good_ids(2, 4, 15)
    bad_src, bad_tgt = with_id(12, T=6, vocab=12), with_id(-1, T=4, vocab=15)
    for call in (lambda: s2s(bad_src, tgt), lambda: s2s.encode(bad_src),
                 lambda: s2s.cross_attention(bad_src, tgt),
                 lambda: S.greedy_decode(s2s, bad_src, bos=1, max_len=5),
                 lambda: S.beam_search(s2s, bad_src, bos=1, eos=2, max_len=5, beam_size=2),
                 lambda: S.sequence_logprob(s2s, bad_src, tgt, eos=2)):
        with pytest.raises(ValueError, match=r"vocab_size=12\) in the source: 12 at row 1"):
            call()
    memory, mask = s2s.encode(src)
    for call in (lambda: s2s(src, bad_tgt), lambda: s2s.decode(bad_tgt, memory, mask),
                 lambda: s2s.cross_attention(src, bad_tgt),
                 lambda: S.sequence_logprob(s2s, src, bad_tgt, eos=2)):
        with pytest.raises(ValueError, match=r"vocab_size=15\) in the target: -1 at row 1"):
            call()
    logits = s2s(src, tgt)
    with pytest.raises(ValueError, match="targets"):
        S.masked_loss(logits, tgt.at[0, 0].set(15))


@pytest.mark.parametrize("kw, match", [
    (dict(bos=15), "bos must be a target token id in 0..14"),
    (dict(bos=-1), "bos must be"),
    (dict(eos=1.0), "eos must be"),
    (dict(max_len=6), "max_len must be an integer between 1 and the model's tgt_len 5"),
    (dict(max_len=0), "max_len"),
    (dict(beam_size=0), "beam_size"),
    (dict(beam_size=2.0), "beam_size"),
])
def test_seq2seq_decoding_settings_are_checked(s2s, kw, match):
    args = dict(bos=1, eos=2, max_len=5, beam_size=2) | kw
    with pytest.raises(ValueError, match=match):
        S.beam_search(s2s, good_ids(2, 6, 12), **args)
    if "eos" not in kw and "beam_size" not in kw:
        with pytest.raises(ValueError, match=match):
            S.greedy_decode(s2s, good_ids(2, 6, 12), bos=args["bos"], max_len=args["max_len"])


def test_seq2seq_decoders_still_run(s2s):
    src = good_ids(2, 6, 12)
    assert S.greedy_decode(s2s, src, bos=1, max_len=5).shape == (2, 5)
    ids, lp = S.beam_search(s2s, src, bos=1, eos=2, max_len=5, beam_size=3)
    assert ids.shape == (2, 5) and lp.shape == (2,)
    np.testing.assert_allclose(S.sequence_logprob(s2s, src, ids, eos=2), lp, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("bad", [V, -1])
def test_generate_rejects_a_prompt_with_ids_outside_the_vocabulary(gpt, bad, use_cache):
    with pytest.raises(ValueError) as e:
        G.generate(gpt, with_id(bad, row=0, pos=2), 3, key=KEY, use_cache=use_cache)
    assert_names_id(e, bad, "row 0, position 2", V)
    assert "prompt" in str(e.value)


def tokens(n=200, bad=None, at=50):
    ids = np.arange(n) % V
    if bad is not None:
        ids[at] = bad
    return ids.astype(np.int32)


TCFG = T.TrainConfig(steps=2, batch_size=2, warmup_steps=0, eval_every=2, eval_batches=1,
                     steps_per_call=2)


@pytest.mark.parametrize("bad", [-3, V, 10**6])
def test_fit_and_evaluate_reject_token_data_outside_the_vocabulary(gpt, bad):
    with pytest.raises(ValueError) as e:
        T.fit(gpt, tokens(bad=bad), tokens(), TCFG, progress=False)
    assert_names_id(e, bad, "position 50", V)
    assert "train data" in str(e.value)
    with pytest.raises(ValueError, match=r"in the validation data: .* at position 7"):
        T.fit(gpt, tokens(), tokens(bad=bad, at=7), TCFG, progress=False)
    with pytest.raises(ValueError, match=r"in the evaluation data: .* at position 9"):
        T.evaluate(gpt, tokens(bad=bad, at=9), TCFG)


def test_fit_and_evaluate_reject_float_or_short_data(gpt):
    with pytest.raises(TypeError, match="integer token ids"):
        T.fit(gpt, tokens().astype(np.float32) + 0.5, tokens(), TCFG, progress=False)
    with pytest.raises(TypeError, match="integer token ids"):
        T.evaluate(gpt, tokens().astype(np.float32), TCFG)
    with pytest.raises(ValueError, match="fewer than block_size"):
        T.evaluate(gpt, tokens(5), TCFG)


@pytest.mark.parametrize("bad", [5, 9, -1, -100])
def test_cross_entropy_rejects_targets_outside_the_classes(bad):
    logits = jnp.zeros((2, 3, 5))
    targets = jnp.zeros((2, 3), jnp.int32).at[1, 2].set(bad)
    with pytest.raises(ValueError) as e:
        metrics.cross_entropy(logits, targets)
    assert_names_id(e, bad, "row 1, position 2", 5)
    assert "logits' last axis (5 classes)" in str(e.value)


def test_cross_entropy_other_bad_targets():
    with pytest.raises(TypeError, match="integer class ids"):
        metrics.cross_entropy(jnp.zeros((3, 5)), jnp.array([0.0, 1.7, 2.0]))
    with pytest.raises(ValueError, match="no targets"):
        metrics.cross_entropy(jnp.zeros((0, 5)), jnp.zeros((0,), jnp.int32))
    # Inside jit there is no value to check: the same call compiles and runs.
    out = jax.jit(metrics.cross_entropy)(jnp.zeros((2, 5)), jnp.array([0, 5]))
    assert out.shape == ()


# ---------------------------------------------------------------- sampling settings


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=np.float32("nan")), "temperature"),
    (dict(top_p=float("nan")), r"top_p must be a probability in \(0, 1\]"),
    (dict(top_p=float("inf")), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=-0.1), "top_p"),
    (dict(top_k=2.5), "top_k must be an integer between 1 and the vocabulary size 20"),
    (dict(top_k=float("nan")), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(top_k=V + 1), "top_k"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be an integer"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_generate_rejects_bad_sampling_settings(gpt, kw, match):
    kw = dict(kw)
    n = kw.pop("max_new_tokens", 3)
    with pytest.raises(ValueError, match=match):
        G.generate(gpt, good_ids(), n, key=KEY, **kw)


def test_sampling_settings_that_are_not_numbers():
    logits = jnp.zeros(6)
    with pytest.raises(TypeError, match="temperature must be a number"):
        G.next_token_probs(logits, temperature="hot")
    with pytest.raises(TypeError, match="top_p must be a number"):
        G.next_token_probs(logits, top_p=[0.9])


def test_numpy_settings_are_accepted(gpt):
    out = G.generate(gpt, good_ids(), np.int64(3), key=KEY, temperature=np.float32(0.8),
                     top_k=np.int64(4), top_p=np.float64(0.9))
    assert out.shape == (2, 8)


@pytest.mark.parametrize("call", [
    lambda lg: G.next_token_probs(lg, temperature=float("nan")),
    lambda lg: G.next_token_probs(lg, temperature=-1.0),
    lambda lg: G.process_logits(lg, temperature=0.0),
    lambda lg: G.filter_top_p(lg, 0.0),
    lambda lg: G.filter_top_p(lg, float("nan")),
    lambda lg: G.filter_top_k(lg, 0),
    lambda lg: G.filter_top_k(lg, 7),
])
def test_the_sampling_helpers_check_their_settings_too(call):
    # Each of these used to return NaN (or silently flipped/empty distributions).
    with pytest.raises(ValueError, match="temperature|top_p|top_k"):
        call(jnp.linspace(-1.0, 1.0, 6))


def test_generate_names_a_model_without_a_cache():
    rnn = R.RecurrentLM(R.RNNConfig(vocab_size=V, block_size=8, d_model=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="use_cache=False"):
        G.generate(rnn, good_ids(), 2, key=KEY)


# ---------------------------------------------------------------- tokenizers


def test_bpe_training_needs_text():
    with pytest.raises(ValueError, match="non-empty text"):
        TK.BPETokenizer.train("", 300)
    with pytest.raises(ValueError, match="non-empty"):
        TK.CharTokenizer.from_text("")


@pytest.mark.parametrize("vocab_size", [255, 0, -1, 300.0, 300.5, True, "300"])
def test_bpe_vocab_size_must_be_an_integer_of_at_least_256(vocab_size):
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 256"):
        TK.BPETokenizer.train("hello hello", vocab_size)


@pytest.mark.parametrize("call", [
    lambda: TK.BPETokenizer.train(b"hello hello", 260),
    lambda: TK.BPETokenizer.train(["hello"], 260),
    lambda: TK.CharTokenizer.from_text(b"hello"),
    lambda: TK.CharTokenizer.from_text(["he", "llo"]),
    lambda: TK.CharTokenizer.from_text("hello").encode(b"hello"),
    lambda: TK.BPETokenizer.train("hello hello", 258).encode(None),
])
def test_tokenizers_want_str(call):
    with pytest.raises(TypeError, match="expects a str"):
        call()


def test_bytes_get_a_hint_to_decode():
    with pytest.raises(TypeError, match=r"decode them first"):
        TK.BPETokenizer.train(b"abc", 260)


@pytest.mark.parametrize("merges", [[(97, -1)], [(97, 256)], [(97, 98), (258, 97)], [(97,)],
                                    [(97.0, 98)]])
def test_bpe_merges_must_refer_to_earlier_ids(merges):
    # A negative id would silently read the last vocabulary entry.
    with pytest.raises(ValueError, match="merge"):
        TK.BPETokenizer(merges)


def test_bpe_accepts_numpy_vocab_size_and_merges():
    tok = TK.BPETokenizer.train("hello hello hello", np.int64(258))
    assert tok.vocab_size == 258
    again = TK.BPETokenizer([tuple(np.array(p)) for p, _ in tok.merges])
    assert again.encode("hello") == tok.encode("hello")


# ---------------------------------------------------------------- every module is reachable


def test_every_module_is_reachable_as_course_lib_attribute():
    names = {m.name for m in pkgutil.iter_modules(course_lib.__path__)
             if not m.name.startswith("_")}
    missing = names - set(course_lib._MODULES)
    assert not missing, f"add {sorted(missing)} to course_lib._MODULES"
    assert set(course_lib._MODULES) == names, "course_lib._MODULES lists a module that is gone"
    for name in sorted(names):
        assert getattr(course_lib, name) is importlib.import_module(f"course_lib.{name}")
    assert names <= set(dir(course_lib))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        course_lib.nonexistent  # noqa: B018


# ---------------------------------------------------------------- TrainConfig


@pytest.mark.parametrize("field, value, match", [
    ("steps", -1, "steps"), ("steps", 100.0, "steps .*must be an integer"), ("steps", True, ""),
    ("batch_size", 0, "batch_size"), ("batch_size", 2.5, "batch_size"),
    ("lr", 0.0, "lr must be a finite number > 0"), ("lr", -1e-3, "lr"), ("lr", math.nan, "lr"),
    ("lr", math.inf, "lr"), ("lr", "1e-3", "lr"), ("lr", None, "lr"),
    ("min_lr", -1e-4, "min_lr must be a finite number >= 0"), ("min_lr", math.nan, "min_lr"),
    ("min_lr", math.inf, "min_lr"), ("min_lr", 2e-3, "min_lr=0.002 is above lr=0.001"),
    ("warmup_steps", -1, "warmup_steps"), ("warmup_steps", 5.0, "warmup_steps"),
    ("decay_steps", 0, "decay_steps .*>= 1"), ("decay_steps", 100.5, "decay_steps"),
    ("weight_decay", -0.1, "weight_decay must be a finite number >= 0"),
    ("weight_decay", math.nan, "weight_decay"), ("weight_decay", math.inf, "weight_decay"),
    ("beta1", 1.0, r"beta1 must be in \[0, 1\)"), ("beta1", -0.1, "beta1"),
    ("beta1", math.nan, "beta1"), ("beta2", 1.0, "beta2"), ("beta2", math.nan, "beta2"),
    ("grad_clip", -1.0, "grad_clip must be a finite number >= 0"),
    ("grad_clip", math.nan, "grad_clip"), ("grad_clip", math.inf, "grad_clip"),
    ("eval_every", 0, r"eval_every \(steps between validation estimates\) must be an integer >= 1"),
    ("eval_every", -5, "eval_every"), ("eval_every", 2.5, "eval_every"),
    ("eval_batches", 0, "eval_batches"), ("eval_batches", 1.5, "eval_batches"),
    ("steps_per_call", 0, "steps_per_call"), ("steps_per_call", 10.0, "steps_per_call"),
    ("seed", 1.5, "seed .*must be an integer"), ("seed", None, "seed"), ("seed", "0", "seed"),
])
def test_train_config_checks_every_field(field, value, match):
    with pytest.raises(ValueError, match=f"TrainConfig.{match}"):
        T.TrainConfig(**{field: value})


def test_every_train_config_field_has_a_check():
    fields = {f.name for f in dataclasses.fields(T.TrainConfig)}
    assert fields == set(T._INT_FIELDS) | set(T._FLOAT_FIELDS)


def test_train_config_accepts_good_values_and_stores_plain_numbers():
    cfg = T.TrainConfig(steps=np.int64(30), lr=1, min_lr=1, warmup_steps=0, decay_steps=None,
                        weight_decay=0, beta1=0.0, grad_clip=0, eval_every=1, seed=-3)
    assert type(cfg.steps) is int and type(cfg.lr) is float and cfg.min_lr == cfg.lr
    assert T.TrainConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    assert T.TrainConfig(decay_steps=np.int32(500)).decay_steps == 500


@pytest.mark.parametrize("kw, match", [
    (dict(steps=10.0), "steps must be None"), (dict(steps=-1), "steps"),
    (dict(checkpoint_every=0), "checkpoint_every"), (dict(checkpoint_every=2.5), "checkpoint_every"),
    (dict(max_seconds=math.nan), "max_seconds"), (dict(max_seconds=0), "max_seconds"),
    (dict(max_seconds=-1.0), "max_seconds"),
])
def test_fit_checks_its_options(gpt, kw, match):
    with pytest.raises(ValueError, match=match):
        T.fit(gpt, tokens(), tokens(), TCFG, progress=False, **kw)


def test_fit_wants_a_train_config(gpt):
    with pytest.raises(TypeError, match="TrainConfig"):
        T.fit(gpt, tokens(), tokens(), dict(steps=2), progress=False)
    with pytest.raises(TypeError, match="callback"):
        T.fit(gpt, tokens(), tokens(), TCFG, progress=False, callback="plot")


# ---------------------------------------------------------------- other silent wrong answers


@pytest.mark.parametrize("bad, match", [(-0.5, "perplexity.*-mean_logprob"),
                                        (math.nan, "NaN"),
                                        (np.array([0.1, -2.0]), ">= 0"),
                                        (jnp.float32(math.nan), "NaN")])
def test_perplexity_rejects_what_cannot_be_a_negative_log_likelihood(bad, match):
    # exp(mean log-probability) is a classic sign slip: it gives a "perplexity" below 1.
    with pytest.raises(ValueError, match=match):
        metrics.perplexity(bad)


def test_perplexity_allows_rounding_just_below_zero_and_works_under_jit():
    assert metrics.perplexity(-1e-9) == pytest.approx(1.0)
    assert float(jax.jit(metrics.perplexity)(jnp.float32(-1.0))) == pytest.approx(math.exp(-1))


@pytest.mark.parametrize("kw, err, match", [
    (dict(block_size=0), ValueError, "block_size must be a positive integer"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=2.0), ValueError, "batch_size"),
    (dict(data=np.linspace(0, 5, 50)), TypeError, "integer token ids"),
])
def test_get_batch_checks_its_arguments(kw, err, match):
    args = dict(data=np.arange(50), batch_size=2, block_size=4) | kw
    with pytest.raises(err, match=match):
        D.get_batch(args["data"], args["batch_size"], args["block_size"], KEY)


def test_as_array_never_truncates_or_wraps():
    with pytest.raises(TypeError, match="integer"):
        D.as_array([1.5, 2.0])
    with pytest.raises(ValueError, match="int32"):
        D.as_array(np.array([2**40]))
    assert D.as_array([]).dtype == np.int32
    np.testing.assert_array_equal(D.as_array(np.array([1, 2], np.int64)), [1, 2])


@pytest.mark.parametrize("kw, match", [
    (dict(ln_eps=0.0), "ln_eps"), (dict(ln_eps=-1e-5), "ln_eps"), (dict(ln_eps=math.nan), "ln_eps"),
    (dict(mlp_ratio=0), "mlp_ratio"), (dict(mlp_ratio=2.5), "mlp_ratio"),
    (dict(vocab_size=True), "vocab_size"),
])
def test_gpt_config_checks_the_remaining_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        M.GPTConfig(**(dict(vocab_size=V, block_size=8, n_layers=1, n_heads=2, d_model=16) | kw))


@pytest.mark.parametrize("kw, match", [
    (dict(src_vocab_size=0), "src_vocab_size"), (dict(tgt_len=4.0), "tgt_len"),
    (dict(n_heads=3), "divisible"), (dict(dropout=1.0), "dropout"),
    (dict(dropout=math.nan), "dropout"),
])
def test_seq2seq_config_is_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SCFG, **kw)


def test_rnn_config_rejects_a_bool_size():
    with pytest.raises(ValueError, match="d_model"):
        R.RNNConfig(vocab_size=V, block_size=8, d_model=True)


@pytest.mark.parametrize("fn", ["embed", "mean_logprob"])
@pytest.mark.parametrize("bad", [-1, 12])
def test_retrieval_rejects_ids_outside_the_vocabulary(fn, bad):
    from course_lib import retrieval

    model = M.GPT(M.GPTConfig(vocab_size=12, block_size=8, n_layers=1, n_heads=2, d_model=8),
                  rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=rf"vocab_size=12\) in the texts given to {fn}: {bad} at row 1, position 2"):
        getattr(retrieval, fn)(model, [[1, 2, 3], [4, 5, bad]])
