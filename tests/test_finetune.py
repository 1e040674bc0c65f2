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
