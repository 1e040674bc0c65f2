"""course_lib.instructions: the tasks and their held-out splits, the chat template with special
tokens, the arrays for train.fit (response mask), preference pairs, and exact match = greedy
decoding."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from course_lib import facts, finetune, generate, train
from course_lib import instructions as I
from course_lib.model import GPT, GPTConfig
from course_lib.tokenizers import CharTokenizer

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak.\n"
        "You are all resolved rather to die than to famish? O'er the hill, Rome's king.\n")


def test_words_from_text_keeps_lower_case_words_of_the_given_lengths():
    words = I.words_from_text(TEXT, min_len=3, max_len=7)
    assert words == sorted(set(words))
    assert {"hear", "speak", "proceed", "famish", "hill"} <= set(words)
    assert "First" not in words and "further" in words  # capitalised words are left out
    assert all(3 <= len(w) <= 7 for w in words) and "me" not in words and "resolved" not in words
    assert "rome" not in words and "er" not in words  # no pieces of words with apostrophes
    with pytest.raises(ValueError, match="min_len <= max_len"):
        I.words_from_text(TEXT, 5, 3)


def test_answers_and_typical_mistakes():
    rng = np.random.default_rng(0)
    assert I.answer("reverse", "stone") == "enots"
    assert I.typical_mistake("reverse", "stone", rng) == "stone"
    assert I.answer("upper", "stone") == "STONE"
    for _ in range(20):  # in capitals but for one letter
        wrong = I.typical_mistake("upper", "stone", rng)
        assert wrong.lower() == "stone" and sum(c.islower() for c in wrong) == 1
    assert I.answer("capital", ("Velor", "Quenby")) == "Quenby"
    dropped = {I.typical_mistake("capital", ("Velor", "Quenby"), rng) for _ in range(50)}
    assert dropped == {"Qenby", "Qunby", "Queby", "Quenb", "Queny"}  # one letter dropped, not Q


def test_a_wrong_count_is_off_by_one():
    rng = np.random.default_rng(0)
    assert I.answer("count", "stone") == "5"
    assert {I.typical_mistake("count", "stone", rng) for _ in range(50)} == {"4", "6"}
    with pytest.raises(ValueError, match="Unknown task"):
        I.answer("translate", "stone")


def test_examples_in_every_phrasing():
    for task, phrasings in I.PHRASINGS.items():
        item = ("Velor", "Quenby") if task == "capital" else "stone"
        prompts = {I.make_example(task, item, p).prompt for p in range(len(phrasings))}
        assert len(prompts) == len(phrasings)  # each phrasing says it differently
        for prompt in prompts:
            assert ("Velor" if task == "capital" else "stone") in prompt
    ex = I.make_example("capital", ("Velor", "Quenby"), 0)
    assert ex.prompt == "Velor's capital is Quenby. What is Velor's capital?"
    assert ex.prompt == f"{I.fact_sentence('Velor', 'Quenby')} {I.capital_question('Velor')}"
    assert ex.response == "Quenby" and ex.item == ("Velor", "Quenby")


def splits(n_words=40, n_facts=30, n_test=5, seed=0):
    words = I.words_from_text(TEXT * 3 + " ".join(
        "".join(chr(97 + (i * 7 + j * 3) % 26) for j in range(4 + i % 3)) for i in range(60)))
    return I.build_splits(words[:n_words], facts.capital_facts(n_facts, seed=1), n_test=n_test,
                          seed=seed)


def test_held_out_words_facts_and_phrasings_never_meet_the_training_set():
    s = splits()
    train_items = {ex.item for ex in s["train"]}
    for name in ("held-out words", "held-out phrasings"):
        assert not train_items & {ex.item for ex in s[name]}
        assert len(s[name]) == 5 * len(I.TASKS)
        for task in I.TASKS:
            assert sum(ex.task == task for ex in s[name]) == 5
    held_out = {I.PHRASINGS[t][-1] for t in I.TASKS}
    templates = {ex.prompt for ex in s["held-out phrasings"]}
    assert all(any(_fits(p, h) for h in held_out) for p in templates)
    assert not any(_fits(ex.prompt, h) for ex in s["train"] + s["held-out words"]
                   for h in held_out)
    # every training word appears in each word task; every training fact once
    n_words = len({ex.item for ex in s["train"] if ex.task == "upper"})
    assert len(s["train"]) == 3 * n_words + 25
    assert s == splits()  # seeded
    assert s["train"] != splits(seed=1)["train"]


def _fits(prompt: str, template: str) -> bool:
    """Whether ``prompt`` was made from ``template`` (its fixed words around the item)."""
    fixed = template.replace("{fact} ", "").replace("{w}", "{x}").split("{x}")
    return all(part in prompt for part in fixed if part.strip())


def test_build_splits_clear_errors():
    with pytest.raises(ValueError, match="Unknown tasks"):
        I.build_splits(["abc"] * 10, facts.capital_facts(10), n_test=2, tasks=("spell",))
    with pytest.raises(ValueError, match="too few to hold out"):
        I.build_splits(["abc", "def", "ghi"], facts.capital_facts(10), n_test=2)
    with pytest.raises(ValueError, match="n_test must be a positive integer"):
        I.build_splits(["abc"] * 10, facts.capital_facts(10), n_test=0)


# ---------------------------------------------------------------- the chat template


def tokenizer():
    base = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .?")
    return base, I.ChatTokenizer.extend(base, ["Count 12 <|end|>", "ABC'"])


def test_chat_tokenizer_keeps_the_old_ids_and_adds_one_id_per_special_token():
    base, tok = tokenizer()
    assert tok.chars[:base.vocab_size] == base.chars  # the pretrained ids are kept
    assert set(tok.chars[base.vocab_size:]) == set("12ABC'") and "|" not in tok.chars
    assert tok.vocab_size == base.vocab_size + 6 + 3
    text = I.chat_text("spell abc.", "ABC")
    assert text == "<|user|>spell abc.<|end|><|assistant|>ABC<|end|>"
    ids = tok.encode(text)
    assert len(ids) == len("spell abc.") + len("ABC") + 4  # each special token is one id
    assert ids[0] == tok.special_ids[I.USER] and ids[-1] == tok.end_id == tok.vocab_size - 1
    assert tok.decode(ids) == text
    assert tok.encode("abc") == base.encode("abc")
    with pytest.raises(ValueError, match="cannot encode"):
        tok.encode("abc!")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="distinct single characters"):
        I.ChatTokenizer(["a", "a"])


def test_encoded_examples_mask_the_response_and_its_end_token():
    _, tok = tokenizer()
    exs = [I.Example("upper", "abc.", "ABC"), I.Example("count", "ab?", "2")]
    arr = I.encode_examples(tok, exs, length=16)
    assert arr.tokens.shape == arr.mask.shape == (2, 17) and arr.tokens.dtype == np.int32
    n_prompt = len(tok.encode(I.chat_text("abc.")))
    assert not arr.mask[0, :n_prompt].any()
    assert tok.decode(arr.tokens[0][arr.mask[0]]) == "ABC<|end|>"
    assert tok.decode(arr.tokens[1][arr.mask[1]]) == "2<|end|>"
    assert (arr.tokens[0, n_prompt + 4:] == tok.end_id).all()  # padding, outside the mask
    every = I.encode_examples(tok, exs, length=16, loss_on="all")
    assert every.mask[0].sum() == n_prompt + 4 and np.array_equal(every.tokens, arr.tokens)
    with pytest.raises(ValueError, match="loss_on must be one of"):
        I.encode_examples(tok, exs, length=16, loss_on="prompt")
    with pytest.raises(ValueError, match="more than length"):
        I.encode_examples(tok, exs, length=8)


def test_preference_pairs_prefer_the_right_answer():
    exs = [I.make_example("reverse", "stone", 0), I.make_example("reverse", "level", 0),
           I.make_example("upper", "stone", 1), I.make_example("capital", ("Velor", "Quen"), 2)]
    pairs = I.preference_pairs(exs)
    assert len(pairs) == 3  # 'level' reversed is 'level': no wrong answer to prefer against
    assert [p.chosen for p in pairs] == ["enots", "STONE", "Quen"]
    assert pairs[0].rejected == "stone" and pairs[1].rejected.lower() == "stone"
    assert len(pairs[2].rejected) == 3 and pairs[2].rejected[0] == "Q"
    own = I.preference_pairs(exs, answers=["enots", "levels", "STONE", ""])  # a model's answers
    assert [(p.chosen, p.rejected) for p in own] == [("level", "levels"), ("Quen", "")]
    with pytest.raises(ValueError, match="one answer per example"):
        I.preference_pairs(exs, answers=["enots"])
    _, tok = tokenizer()
    tok = I.ChatTokenizer.extend(tok, [p.prompt + p.chosen + p.rejected for p in pairs])
    arr = I.encode_pairs(tok, pairs, length=72)
    assert arr.chosen.shape == arr.rejected.shape == (3, 73)
    assert tok.decode(arr.rejected[0][arr.rejected_mask[0]]) == "stone<|end|>"


# ---------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def trained():
    """A tiny GPT instruction-tuned for a few seconds on counting letters: some answers right,
    some wrong."""
    words = ["".join(chr(97 + (i * 5 + j * 11) % 26) for j in range(3 + i % 4))
             for i in range(120)]
    exs = [I.make_example("count", w, i % 3) for i, w in enumerate(words)]
    base = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz HCNmowy?")
    tok = I.ChatTokenizer.extend(base, [I.chat_text(e.prompt, e.response) for e in exs])
    model = GPT(GPTConfig(tok.vocab_size, block_size=48, n_layers=1, n_heads=2, d_model=32),
                rngs=nnx.Rngs(0))
    arr = I.encode_examples(tok, exs, 47)
    tcfg = train.TrainConfig(steps=120, batch_size=16, lr=1e-2, warmup_steps=10,
                             eval_every=120, eval_batches=1, steps_per_call=60)
    train.fit(model, arr, arr, tcfg, sample_batch=finetune.sft_batch,
              loss=finetune.sft_train_loss, progress=False)
    return model, tok, exs


def test_exact_match_is_greedy_decoding_without_generating(trained):
    model, tok, exs = trained
    said = I.complete(model, tok, [e.prompt for e in exs], max_new_tokens=4, batch_size=32)
    right = I.exact_match(model, tok, exs, batch_size=32)
    assert right.shape == (len(exs),) and right.dtype == bool
    assert 0 < right.sum() < len(exs)  # partly trained: both kinds of answers occur
    assert list(right) == [s == e.response for s, e in zip(said, exs)]
    # the library's own greedy generation agrees with complete
    ids = tok.encode(I.chat_text(exs[0].prompt))
    out = generate.generate(model, np.array([ids]), 3, key=jax.random.key(0), temperature=0.0)
    new = [int(i) for i in np.asarray(out)[0, len(ids):]]
    new = new[:new.index(tok.end_id)] if tok.end_id in new else new
    assert tok.decode(new) == said[0]
    # a wrong response is never an exact match
    wrong = [dataclasses.replace(e, response=e.response + "a") for e in exs[:8]]
    assert not I.exact_match(model, tok, wrong).any()


def test_complete_clear_errors(trained):
    model, tok, _ = trained
    with pytest.raises(ValueError, match="no room left for an answer"):
        I.complete(model, tok, ["a" * 45], max_new_tokens=8)  # 48 tokens with the template
    assert len(I.complete(model, tok, ["a" * 42], max_new_tokens=8)[0]) <= 3  # cut to fit
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        I.complete(model, tok, ["abc"], max_new_tokens=0)
