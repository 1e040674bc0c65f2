"""course_lib.finetune: the SFT loss, LoRA adapters (equal to the base model at first, merged =
unmerged, only adapters train), frozen weights, and the DPO loss, against their definitions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from course_lib import finetune as F
from course_lib import model as M
from course_lib import train as T

CFG = M.GPTConfig(vocab_size=12, block_size=16, n_layers=2, n_heads=2, d_model=16)


def randn(*shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# ---------------------------------------------------------------- SFT loss


def test_sft_loss_is_the_mean_over_the_masked_in_tokens():
    logits = randn(2, 5, 7)
    targets = jnp.asarray([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]])
    mask = jnp.asarray([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], bool)
    nll = -jax.nn.log_softmax(logits)[jnp.arange(2)[:, None], jnp.arange(5)[None], targets]
    want = nll[np.asarray(mask)].mean()
    np.testing.assert_allclose(F.sft_loss(logits, targets, mask), want, rtol=1e-6)
    # all tokens masked in: the plain next-token loss
    full = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    np.testing.assert_allclose(F.sft_loss(logits, targets, jnp.ones((2, 5))), full, rtol=1e-6)
    # the prompt's tokens do not count, whatever the model predicts there
    changed = logits.at[:, 0].set(100.0)
    np.testing.assert_allclose(F.sft_loss(changed, targets, mask), want, rtol=1e-6)


def test_sft_loss_clear_errors():
    with pytest.raises(ValueError, match="selects no token"):
        F.sft_loss(randn(1, 3, 4), jnp.zeros((1, 3), int), jnp.zeros((1, 3), bool))
    with pytest.raises(ValueError, match=r"must both have the shape \(batch, seq\)"):
        F.sft_loss(randn(1, 3, 4), jnp.zeros((1, 4), int), jnp.ones((1, 3), bool))
    # inside jit a zero mask gives 0, not NaN
    assert float(jax.jit(F.sft_loss)(randn(1, 3, 4), jnp.zeros((1, 3), int),
                                     jnp.zeros((1, 3)))) == 0.0


def test_sequence_logprobs_sum_over_the_mask():
    logits, targets = randn(2, 4, 5, seed=1), jnp.asarray([[0, 1, 2, 3], [4, 3, 2, 1]])
    mask = jnp.asarray([[0, 1, 1, 0], [1, 1, 1, 1]], bool)
    logp = jax.nn.log_softmax(logits)
    want = [logp[0, 1, 1] + logp[0, 2, 2], sum(logp[1, t, targets[1, t]] for t in range(4))]
    np.testing.assert_allclose(F.sequence_logprobs(logits, targets, mask), want, rtol=1e-5)


# ---------------------------------------------------------------- DPO


def test_dpo_loss_matches_its_formula():
    pc, pr = jnp.asarray([-3.0, -5.0]), jnp.asarray([-4.0, -2.0])
    rc, rr = jnp.asarray([-3.5, -4.0]), jnp.asarray([-3.5, -4.0])
    beta = 0.5
    margins = beta * ((pc - rc) - (pr - rr))
    want = np.mean(np.log1p(np.exp(-np.asarray(margins))))
    np.testing.assert_allclose(F.dpo_loss(pc, pr, rc, rr, beta), want, rtol=1e-6)
    np.testing.assert_allclose(F.preference_margins(pc, pr, rc, rr, beta), margins)
    # policy = reference: every margin is 0 and the loss is log 2
    np.testing.assert_allclose(F.dpo_loss(rc, rr, rc, rr), np.log(2.0), rtol=1e-6)
    # the gradient raises the chosen answer's log-probability and lowers the rejected one's
    g_c, g_r = jax.grad(F.dpo_loss, argnums=(0, 1))(pc, pr, rc, rr, beta)
    assert np.all(np.asarray(g_c) < 0) and np.all(np.asarray(g_r) > 0)


def test_dpo_loss_clear_errors():
    x = jnp.zeros(3)
    with pytest.raises(ValueError, match="beta must be a positive number"):
        F.dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match=r"four arrays of shape \(pairs,\)"):
        F.dpo_loss(x, x, x, jnp.zeros(4))


# ---------------------------------------------------------------- LoRA and frozen weights


def gpt(seed=0, cfg=CFG):
    return M.GPT(cfg, rngs=nnx.Rngs(seed))


def test_lora_model_equals_the_base_model_at_initialisation():
    ids = jnp.asarray([[1, 2, 3, 4, 5, 6]])
    base, adapted = gpt(), F.add_lora(gpt(), rank=4, alpha=8.0)
    np.testing.assert_allclose(adapted(ids), base(ids), atol=0)
    q = adapted.blocks[0].attn.q
    assert isinstance(q, F.LoRALinear) and q.scale == 2.0
    assert q.lora_a.shape == (16, 4) and q.lora_b.shape == (4, 16)
    assert not isinstance(adapted.blocks[0].attn.k, F.LoRALinear)
    # trainable parameters: only the adapters of q and v in both blocks
    assert M.count_params(adapted) == 2 * 2 * 4 * (16 + 16)


def test_merged_and_unmerged_outputs_are_equal_and_merging_restores_the_structure():
    ids = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6]])
    adapted = F.add_lora(gpt(), rank=2, alpha=4.0, targets=r"(attn\.(q|k|v|proj)|mlp\.fc)$")
    for _, node in F._modules(adapted):  # give every adapter a non-zero change
        if isinstance(node, F.LoRALinear):
            node.lora_b[...] = randn(*node.lora_b.shape, seed=3) * 0.3
    before = adapted(ids)
    assert np.abs(np.asarray(before - gpt()(ids))).max() > 1e-3  # the adapters do change it
    merged = F.merge_lora(adapted)
    np.testing.assert_allclose(merged(ids), before, atol=1e-5)
    assert M.count_params(merged) == M.count_params(gpt())  # the base model's structure again
    assert nnx.graphdef(merged) == nnx.graphdef(gpt())


def test_only_the_adapters_change_while_training():
    ids = (np.arange(600) * 5 % 12).astype(np.int32)
    net = F.add_lora(gpt(), rank=2, alpha=4.0)
    frozen_before = jax.tree.map(np.asarray, nnx.state(net, F.Frozen))
    lora_before = jax.tree.map(np.asarray, nnx.state(net, nnx.LoRAParam))
    tcfg = T.TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup_steps=1, eval_every=6,
                         eval_batches=1, steps_per_call=6)
    result = T.fit(net, ids[:500], ids[500:], tcfg, progress=False)
    assert result.history.train_loss[-1] < result.history.train_loss[0]
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(nnx.state(net, F.Frozen))):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(lora_before), jax.tree.leaves(nnx.state(net, nnx.LoRAParam)))]
    assert all(changed)
    # AdamW keeps two numbers per trainable weight: the adapters' state is tiny
    tx = T.make_optimizer(tcfg)
    assert F.optimizer_state_bytes(net, tx) < 0.1 * F.optimizer_state_bytes(gpt(), tx)


def test_freeze_and_unfreeze():
    net = gpt()
    n_arrays = len(jax.tree.leaves(nnx.state(net, nnx.Param)))
    assert F.freeze(net.blocks[0]) > 0
    assert M.count_params(net) < M.count_params(gpt())
    F.freeze(net)
    assert M.count_params(net) == 0
    assert F.unfreeze(net) == n_arrays and M.count_params(net) == M.count_params(gpt())


def test_lora_on_a_llama_style_model():
    cfg = dataclasses.replace(CFG, pos_encoding="rope", norm="rmsnorm", mlp="swiglu",
                              n_kv_heads=1)
    ids = jnp.asarray([[1, 2, 3, 4]])
    net = F.add_lora(gpt(cfg=cfg), rank=2, alpha=2.0, targets=r"mlp\.(gate|fc)$")
    np.testing.assert_allclose(net(ids), gpt(cfg=cfg)(ids), atol=0)
    assert isinstance(net.blocks[1].mlp.gate, F.LoRALinear)


def test_lora_clear_errors():
    with pytest.raises(ValueError, match="matches none of the model's linear layers"):
        F.add_lora(gpt(), targets=r"attn\.query$")
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        F.add_lora(gpt(), rank=0)
    with pytest.raises(ValueError, match="rank 32 is larger than the layer"):
        F.add_lora(gpt(), rank=32)
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        F.add_lora(gpt(), alpha=-1)
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        F.merge_lora(gpt())


def test_a_lora_checkpoint_holds_the_adapters_and_resumes(tmp_path):
    ids = (np.arange(600) * 5 % 12).astype(np.int32)
    tcfg = T.TrainConfig(steps=4, batch_size=4, lr=1e-2, warmup_steps=1, eval_every=2,
                         eval_batches=1, steps_per_call=2)
    state = T.fit(F.add_lora(gpt(), rank=2), ids[:500], ids[500:], tcfg, progress=False,
                  checkpoint_dir=tmp_path)
    fresh = F.add_lora(gpt(), rank=2)  # the same base weights, new adapters
    restored = T.restore_checkpoint(tmp_path, fresh)
    assert restored.step == 4
    for a, b in zip(jax.tree.leaves(nnx.state(state.model, nnx.LoRAParam)),
                    jax.tree.leaves(nnx.state(restored.model, nnx.LoRAParam))):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the SFT loss from sequences


def test_response_loss_shifts_the_mask_with_the_targets():
    logits = randn(2, 5, 7, seed=4)
    tokens = jnp.asarray([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])
    resp = jnp.asarray([[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1]], bool)
    want = F.sft_loss(logits, tokens[:, 1:], resp[:, 1:])
    np.testing.assert_allclose(F.response_loss(logits, tokens, resp), want, rtol=1e-6)
    # written out: the logits at position t are scored on token t + 1 where it is a response token
    nll = -jax.nn.log_softmax(logits)
    terms = [nll[b, t, tokens[b, t + 1]] for b in range(2) for t in range(5) if resp[b, t + 1]]
    np.testing.assert_allclose(F.response_loss(logits, tokens, resp), np.mean(terms), rtol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(batch, seq \+ 1\)"):
        F.response_loss(logits, tokens, resp[:, 1:])


def test_sft_batches_and_loss_train_through_fit():
    tokens = np.tile(np.arange(9, dtype=np.int32) % 12, (20, 1))  # (20, 9): 8 inputs each
    mask = np.zeros_like(tokens, bool)
    mask[:, 5:] = True  # the "response": the last 4 tokens
    x, (y, m) = F.sft_batch((tokens, mask), 4, jax.random.key(0))
    assert x.shape == y.shape == m.shape == (4, 8)
    np.testing.assert_array_equal(y, tokens[:4, 1:])
    np.testing.assert_array_equal(m, mask[:4, 1:])
    net = gpt()
    np.testing.assert_allclose(F.sft_train_loss(net, x, (y, m)),
                               F.sft_loss(net(x), y, m), rtol=1e-6)
    tcfg = T.TrainConfig(steps=20, batch_size=4, lr=1e-2, warmup_steps=2, eval_every=20,
                         eval_batches=1, steps_per_call=10)
    state = T.fit(net, (tokens, mask), (tokens, mask), tcfg, sample_batch=F.sft_batch,
                  loss=F.sft_train_loss, progress=False)
    assert state.history.val_loss[-1] < 0.5 * state.history.val_loss[0]


# ---------------------------------------------------------------- a larger vocabulary


@pytest.mark.parametrize("tied", [True, False])
def test_grow_vocab_keeps_every_old_prediction(tied):
    cfg = dataclasses.replace(CFG, tie_embeddings=tied)
    old = gpt(cfg=cfg)
    grown = F.grow_vocab(old, 15, seed=1)
    assert grown.cfg.vocab_size == 15 and old.cfg.vocab_size == 12
    ids = jnp.asarray([[1, 2, 3, 4, 5, 6, 7]])
    np.testing.assert_allclose(grown(ids)[..., :12], old(ids), rtol=1e-5, atol=1e-6)
    table, old_table = np.asarray(grown.wte.embedding[...]), np.asarray(old.wte.embedding[...])
    np.testing.assert_array_equal(table[:12], old_table)
    # each new row: near the mean of the old rows, and different from each other
    spread = old_table.std(0).mean()
    assert np.abs(table[12:] - old_table.mean(0)).max() < spread
    assert np.abs(table[12] - table[13]).max() > 1e-3
    # a new token's logit is an average one, not a large one
    logits = np.asarray(grown(ids))
    assert (logits[..., 12:].max(-1) < logits[..., :12].max(-1)).all()
    new_ids = jnp.asarray([[12, 13, 14, 1]])
    assert np.isfinite(np.asarray(grown(new_ids))).all()


def test_grow_vocab_clear_errors():
    with pytest.raises(ValueError, match="vocab_size must be an integer >= the model's 12"):
        F.grow_vocab(gpt(), 8)
    with pytest.raises(ValueError, match="before freezing weights or adding LoRA"):
        F.grow_vocab(F.add_lora(gpt(), rank=2), 14)
    with pytest.raises(TypeError, match="needs a GPT"):
        F.grow_vocab(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), 4)


# ---------------------------------------------------------------- heads on the final states


def test_pooled_head_ignores_the_padding_and_freezes_to_a_linear_probe():
    head = F.PooledHead(gpt(), 3, rngs=nnx.Rngs(1))
    ids = jnp.asarray([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out = head(ids, mask)
    assert out.shape == (2, 3)
    changed = head(ids.at[0, 3:].set(9), mask)  # other padding: the same output
    np.testing.assert_allclose(changed, out, rtol=1e-5, atol=1e-6)
    alone = head(ids[:1, :3], mask[:1, :3])
    np.testing.assert_allclose(alone, out[:1], rtol=1e-5, atol=1e-6)
    n_all = M.count_params(head)
    F.freeze(head.backbone)
    assert M.count_params(head) == 16 * 3 + 3 < n_all  # only the head's kernel and bias


def _labelled(n=64, seed=0):
    """Sequences of ids below 12; label 1 when token 11 occurs in them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 11, (n, 8)).astype(np.int32)
    labels = (rng.random(n) < 0.5).astype(np.int32)
    ids[labels == 1, rng.integers(0, 8)] = 11
    return ids, np.ones_like(ids, bool), labels


@pytest.mark.parametrize("frozen", [False, True])
def test_classifier_trains_end_to_end_or_on_frozen_features(frozen):
    net = F.PooledHead(gpt(), 2, rngs=nnx.Rngs(1))
    if frozen:
        F.freeze(net.backbone)
    weights = (nnx.Param, F.Frozen)  # trainable or not
    before = jax.tree.map(np.asarray, nnx.state(net.backbone, weights))
    data = _labelled()
    (x_ids, x_mask), y = F.labelled_batch(data, 5, jax.random.key(0))
    assert x_ids.shape == x_mask.shape == (5, 8) and y.shape == (5,)
    tcfg = T.TrainConfig(steps=40, batch_size=16, lr=1e-2, warmup_steps=2, eval_every=40,
                         eval_batches=2, steps_per_call=20)
    state = T.fit(net, data, data, tcfg, sample_batch=F.labelled_batch,
                  loss=F.classification_loss, progress=False)
    assert state.history.val_loss[-1] < state.history.val_loss[0]
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                 jax.tree.leaves(nnx.state(net.backbone, weights)))]
    assert all(same) if frozen else not all(same)


# ---------------------------------------------------------------- InfoNCE


def test_info_nce_loss_is_the_cross_entropy_of_the_cosines():
    q, k = randn(4, 3, seed=1), randn(4, 3, seed=2)
    qn = np.asarray(q) / np.linalg.norm(q, axis=1, keepdims=True)
    kn = np.asarray(k) / np.linalg.norm(k, axis=1, keepdims=True)
    scores = qn @ kn.T / 0.1
    want = np.mean(np.log(np.exp(scores).sum(1)) - np.diag(scores))
    np.testing.assert_allclose(F.info_nce_loss(q, k, 0.1), want, rtol=1e-5)
    np.testing.assert_allclose(F.info_nce_loss(3 * q, k, 0.1), want, rtol=1e-5)  # cosines only
    same = jnp.ones((5, 3))
    np.testing.assert_allclose(F.info_nce_loss(same, same), np.log(5.0), rtol=1e-6)
    assert float(F.info_nce_loss(k, k, 0.01)) < 0.1  # each key is its own best match
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        F.info_nce_loss(q, k, 0.0)
    with pytest.raises(ValueError, match=r"shape \(batch, dim\)"):
        F.info_nce_loss(q, k[:3])


def test_an_encoder_learns_to_match_pairs_with_info_nce():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 12, (40, 6)).astype(np.int32)
    queries = keys.copy()
    queries[:, 0] = rng.integers(0, 12, 40)  # a damaged copy: one token changed
    mask = np.ones_like(keys, bool)
    data = (queries, mask, keys, mask)
    (qi, _), (ki, _) = F.pair_batch(data, 8, jax.random.key(1))
    assert len({tuple(r) for r in np.asarray(ki)}) == 8  # distinct pairs in a batch
    np.testing.assert_array_equal(np.asarray(qi)[:, 1:], np.asarray(ki)[:, 1:])
    loss = F.InfoNCELoss(0.1)
    assert loss == F.InfoNCELoss(0.1) and hash(loss) == hash(F.InfoNCELoss(0.1))
    net = F.PooledHead(gpt(), 8, rngs=nnx.Rngs(2))
    tcfg = T.TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=30,
                         eval_batches=2, steps_per_call=15)
    state = T.fit(net, data, data, tcfg, sample_batch=F.pair_batch, loss=loss, progress=False)
    assert state.history.val_loss[-1] < state.history.val_loss[0] - 0.3


# ---------------------------------------------------------------- DPO with fit


def _pairs(n=24, seed=0):
    """Preference data of 9-token sequences: the response is the last 3 tokens; the chosen
    one counts up, the rejected one repeats a token."""
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, 12, (n, 9)).astype(np.int32)
    rejected = chosen.copy()
    chosen[:, 6:] = (chosen[:, 5:6] + np.arange(1, 4)) % 12
    rejected[:, 6:] = chosen[:, 5:6]
    mask = np.zeros_like(chosen, bool)
    mask[:, 6:] = True
    return chosen, mask, rejected, mask


def test_pair_logprobs_are_the_sequence_logprobs_of_each_answer():
    net = gpt()
    chosen, c_mask, rejected, r_mask = _pairs()
    lp_c, lp_r = F.pair_logprobs(net, chosen, c_mask, rejected, r_mask, batch_size=16)
    assert lp_c.shape == lp_r.shape == (24,)
    want = F.sequence_logprobs(net(jnp.asarray(rejected[:, :-1])), rejected[:, 1:], r_mask[:, 1:])
    np.testing.assert_allclose(lp_r, want, rtol=1e-5, atol=1e-5)


def test_dpo_through_fit_raises_the_chosen_answer_relative_to_the_reference():
    policy = gpt()
    pairs = _pairs()
    ref_c, ref_r = F.pair_logprobs(gpt(), *pairs)  # the reference: the same weights, frozen
    data = (*pairs, ref_c, ref_r)
    x, y = F.preference_batch(data, 4, jax.random.key(0))
    assert x[0].shape == x[1].shape == (4, 8) and y[4].shape == (4,)
    loss = F.DPOLoss(beta=0.5)
    np.testing.assert_allclose(loss(policy, x, y), np.log(2.0), rtol=1e-5)  # policy = reference
    assert loss == F.DPOLoss(0.5) != F.DPOLoss(0.1)
    tcfg = T.TrainConfig(steps=30, batch_size=8, lr=5e-3, warmup_steps=2, eval_every=30,
                         eval_batches=2, steps_per_call=15)
    T.fit(policy, data, data, tcfg, sample_batch=F.preference_batch, loss=loss, progress=False)
    pol_c, pol_r = F.pair_logprobs(policy, *pairs)
    margins = F.preference_margins(pol_c, pol_r, ref_c, ref_r, beta=0.5)
    assert float(np.mean(margins)) > 0.5 and np.mean(margins > 0) > 0.9
