"""GPT-2 checkpoints made by the reference implementation (Hugging Face transformers on PyTorch's
CPU build) load into the course's GPT with load_gpt2 and compute the same thing: logits within
1e-4, identical greedy generations with and without the KV cache. And the reverse: a course GPT
written by save_gpt2 loads into transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import GPT2Config, GPT2LMHeadModel

from course_lib import generate, pretrained
from course_lib.model import GPT, GPTConfig, count_params, n_params_formula

VOCAB, CONTEXT = 300, 64
VARIANTS = {
    "gpt2": {},  # GPT-2's own design: tied output layer, 4x MLP, eps 1e-5
    "untied, n_inner=96, eps=1e-6": {"tie_word_embeddings": False, "n_inner": 96,
                                     "layer_norm_epsilon": 1e-6,
                                     "activation_function": "gelu_pytorch_tanh"},
}


def reference_model(seed: int = 0, **options) -> GPT2LMHeadModel:
    """A small GPT-2 in transformers with every parameter random, biases and LayerNorms
    included (a fresh GPT-2 has zero biases and unit LayerNorms, which would hide a swap)."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=CONTEXT, vocab_size=VOCAB,
                        bos_token_id=None, eos_token_id=None, **options)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1 if name.endswith("bias") else 0.2)
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(reference model, the course's GPT loaded from the reference's own safetensors files)."""
    reference = reference_model(**VARIANTS[request.param])
    folder = tmp_path_factory.mktemp("hf")
    reference.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").exists()
    return reference, pretrained.load_gpt2(folder)


def reference_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def test_config_read_from_transformers(pair):
    reference, ours = pair
    hf, cfg = reference.config, ours.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model) == (hf.n_layer, hf.n_head, hf.n_embd)
    assert (cfg.vocab_size, cfg.block_size, cfg.ln_eps) == (VOCAB, CONTEXT, hf.layer_norm_epsilon)
    assert cfg.hidden == (hf.n_inner or 4 * hf.n_embd)
    assert cfg.tie_embeddings == hf.tie_word_embeddings
    n_reference = sum(p.numel() for p in reference.parameters())  # tied: wte counted once
    assert count_params(ours) == n_params_formula(cfg) == n_reference


def test_logits_equal(pair):
    reference, ours = pair
    ids = np.random.default_rng(0).integers(0, VOCAB, (3, CONTEXT))
    expected = reference_logits(reference, ids)
    got = np.asarray(ours(jnp.asarray(ids)))
    assert np.abs(expected).max() > 1.0  # logits far from zero: the test can see a mistake
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_identical(pair, use_cache):
    reference, ours = pair
    prompt = np.random.default_rng(1).integers(0, VOCAB, (3, 8))
    n_new = CONTEXT - prompt.shape[1]  # up to the end of the context
    with torch.no_grad():
        expected = reference.generate(torch.from_numpy(prompt), max_new_tokens=n_new,
                                      min_new_tokens=n_new, do_sample=False,
                                      attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                                      pad_token_id=0).numpy()
    got = generate.generate(ours, jnp.asarray(prompt), n_new, key=jax.random.key(0),
                            temperature=0, use_cache=use_cache)
    assert expected.shape == got.shape == (3, CONTEXT)
    assert np.array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("options", [{"bias": True}, {"bias": False, "tie_embeddings": False}])
def test_course_gpt_loads_into_transformers(tmp_path, options):
    cfg = GPTConfig(vocab_size=VOCAB, block_size=CONTEXT, n_layers=2, n_heads=4, d_model=64,
                    **options)
    ours = GPT(cfg, rngs=nnx.Rngs(0))
    reference = GPT2LMHeadModel.from_pretrained(pretrained.save_gpt2(ours, tmp_path)).eval()
    ids = np.random.default_rng(2).integers(0, VOCAB, (2, CONTEXT))
    expected = reference_logits(reference, ids)
    assert np.abs(np.asarray(ours(jnp.asarray(ids))) - expected).max() < 1e-4
