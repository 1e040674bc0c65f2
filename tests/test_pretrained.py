"""course_lib.pretrained without PyTorch: checkpoints in GPT-2's Hugging Face layout, written here
with safetensors.numpy, load into the course's GPT and compute what GPT-2 computes (checked
against a plain-numpy GPT-2); every malformed file is a clear error naming the problem.
(Parity with transformers' own GPT-2: tests_reference/test_gpt2_parity.py.)"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from course_lib import generate, pretrained
from course_lib.model import GPT, GPTConfig, n_params_formula
from course_lib.tokenizers import ENDOFTEXT, BPETokenizer

SMALL = {"model_type": "gpt2", "vocab_size": 300, "n_positions": 32, "n_layer": 2,
         "n_head": 4, "n_embd": 64, "activation_function": "gelu_new",
         "layer_norm_epsilon": 1e-5}


def random_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2 weights of this config, random and far from trivial (biases and LayerNorm
    parameters too), named as in Hugging Face's layout without a prefix."""
    rng = np.random.default_rng(seed)
    shapes = pretrained.expected_tensors(pretrained.config_from_hf(config))
    out = {}
    for name, shape in shapes.items():
        x = rng.normal(0.0, 0.2 if len(shape) == 2 else 0.1, shape)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            x += 1.0
        out[name] = x.astype(np.float32)
    return out


def write(folder, tensors: dict, config: dict = SMALL, prefix: str = "transformer."):
    folder.mkdir(parents=True, exist_ok=True)
    named = {(k if k.startswith("lm_head") else prefix + k): v for k, v in tensors.items()}
    save_file(named, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


# --- GPT-2 in plain numpy, from the Hugging Face tensors: the reference the loader must meet ---


def _layer_norm(x, w, b, eps):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def numpy_gpt2(t: dict, ids: np.ndarray, config: dict) -> np.ndarray:
    """Logits (T, V) of GPT-2 for one sequence, in float64, straight from the checkpoint."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    eps, H = config["layer_norm_epsilon"], config["n_head"]
    x = t["wte.weight"][ids] + t["wpe.weight"][: len(ids)]  # (T, C)
    T, C = x.shape
    D = C // H
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(config["n_layer"]):
        p = f"h.{i}."
        a = _layer_norm(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"], eps)
        qkv = a @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]  # (T, 3C)
        q, k, v = (m.reshape(T, H, D).transpose(1, 0, 2) for m in np.split(qkv, 3, axis=-1))
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(D), -np.inf)  # (H, T, T)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        y = (w @ v).transpose(1, 0, 2).reshape(T, C)
        x = x + y @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
        m = _layer_norm(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"], eps)
        hidden = _gelu_tanh(m @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"])
        x = x + hidden @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
    x = _layer_norm(x, t["ln_f.weight"], t["ln_f.bias"], eps)
    return x @ t["wte.weight"].T


@pytest.fixture(scope="module")
def tensors():
    return random_tensors(SMALL)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(1).integers(0, SMALL["vocab_size"], (2, SMALL["n_positions"]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tensors):
    return write(tmp_path_factory.mktemp("gpt2"), tensors)


def test_loaded_model_computes_gpt2(folder, tensors, ids):
    model = pretrained.load_gpt2(folder)
    assert isinstance(model, GPT)
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.vocab_size, cfg.block_size) == (
        2, 4, 64, 300, 32)
    assert cfg.bias and cfg.tie_embeddings and cfg.pos_encoding == "learned"
    logits = np.asarray(model(jnp.asarray(ids)))
    for row in range(len(ids)):
        ref = numpy_gpt2(tensors, ids[row], SMALL)
        assert np.abs(logits[row] - ref).max() < 1e-4
        assert np.abs(ref).max() > 1.0  # the weights are large enough to matter


@pytest.mark.parametrize("prefix", ["", "transformer."])
@pytest.mark.parametrize("extras", ["none", "buffers and lm_head"])
def test_name_variants_load_alike(tmp_path, tensors, ids, folder, prefix, extras):
    """With or without 'transformer.', with the mask buffers of older checkpoints and a saved
    copy of the tied output layer, as the Hub's own gpt2 file holds them."""
    t = dict(tensors)
    if extras != "none":
        T = SMALL["n_positions"]
        for i in range(SMALL["n_layer"]):
            t[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, T, T), np.float32))
            t[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
        t["lm_head.weight"] = tensors["wte.weight"].copy()
    model = pretrained.load_gpt2(write(tmp_path, t, prefix=prefix))
    reference = pretrained.load_gpt2(folder)
    assert np.array_equal(model(jnp.asarray(ids)), reference(jnp.asarray(ids)))


def test_loaded_model_is_an_ordinary_gpt(folder, ids):
    """The same structure as a GPT built the usual way (so it trains, splits and compiles like
    one), and cached greedy generation equals recomputing the prefix."""
    model = pretrained.load_gpt2(folder)
    fresh = GPT(model.cfg, rngs=nnx.Rngs(0))
    fresh.eval()  # load_gpt2 returns the model in eval mode
    assert nnx.graphdef(model) == nnx.graphdef(fresh)
    assert jax.tree.structure(nnx.state(model)) == jax.tree.structure(nnx.state(fresh))
    prompt = jnp.asarray(ids[:, :5])
    a = generate.generate(model, prompt, 20, key=jax.random.key(0), temperature=0)
    b = generate.generate(model, prompt, 20, key=jax.random.key(0), temperature=0,
                          use_cache=False)
    assert np.array_equal(a, b)


def test_sharded_checkpoint(tmp_path, tensors, ids, folder):
    names = sorted(tensors)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half],
             "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in parts.items():
        save_file({"transformer." + k: tensors[k] for k in keys}, str(tmp_path / file))
    index = {"weight_map": {"transformer." + k: f for f, ks in parts.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    model = pretrained.load_gpt2(tmp_path)
    assert np.array_equal(model(jnp.asarray(ids)), pretrained.load_gpt2(folder)(jnp.asarray(ids)))


@pytest.mark.parametrize("options", [
    {"bias": True},
    {"bias": False},  # written with zero biases: the same function
    {"bias": True, "tie_embeddings": False, "mlp_hidden": 96, "ln_eps": 1e-6},
])
def test_save_gpt2_round_trip(tmp_path, ids, options):
    cfg = GPTConfig(vocab_size=300, block_size=32, n_layers=2, n_heads=4, d_model=64, **options)
    model = GPT(cfg, rngs=nnx.Rngs(3))
    loaded = pretrained.load_gpt2(pretrained.save_gpt2(model, tmp_path))
    assert loaded.cfg == GPTConfig(**{**cfg.__dict__, "bias": True})
    assert np.abs(loaded(jnp.asarray(ids)) - model(jnp.asarray(ids))).max() < 1e-6
    names = load_file(str(tmp_path / "model.safetensors"))
    assert ("lm_head.weight" in names) == (not cfg.tie_embeddings)
    assert all(k.startswith("transformer.") for k in names if k != "lm_head.weight")


def test_save_gpt2_with_tokenizer(tmp_path):
    bpe = BPETokenizer.train("the cat sat on the mat, the end. " * 20, vocab_size=270)
    cfg = GPTConfig(vocab_size=bpe.vocab_size + 1, block_size=16, n_layers=1, n_heads=2,
                    d_model=16, bias=True)
    folder = pretrained.save_gpt2(GPT(cfg, rngs=nnx.Rngs(0)), tmp_path, tokenizer=bpe)
    tok = pretrained.load_gpt2_tokenizer(folder)
    assert tok.special_tokens == {ENDOFTEXT: bpe.vocab_size}
    assert tok.encode("the cat") == bpe.encode("the cat")
    small = GPTConfig(**{**cfg.__dict__, "vocab_size": bpe.vocab_size})  # no room for the marker
    with pytest.raises(ValueError, match=f"tokenizer has {bpe.vocab_size + 1} tokens"):
        pretrained.save_gpt2(GPT(small, rngs=nnx.Rngs(0)), tmp_path / "x", tokenizer=bpe)


@pytest.mark.parametrize("option, value", [("pos_encoding", "rope"), ("norm", "rmsnorm"),
                                           ("mlp", "swiglu"), ("n_kv_heads", 1)])
def test_save_gpt2_rejects_llama_options(tmp_path, option, value):
    cfg = GPTConfig(vocab_size=50, block_size=8, n_layers=1, n_heads=2, d_model=8,
                    **{option: value})
    with pytest.raises(ValueError, match=f"no .*{option}"):
        pretrained.save_gpt2(GPT(cfg, rngs=nnx.Rngs(0)), tmp_path)


@pytest.mark.parametrize("name, n_params", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                            ("gpt2-large", 774_030_080),
                                            ("gpt2-xl", 1_557_611_200)])
def test_the_four_sizes(name, n_params):
    """GPT-2's published parameter counts (tied output layer, biases, learned positions)."""
    cfg = pretrained.config_from_hf(pretrained.gpt2_config(name))
    assert (cfg.vocab_size, cfg.block_size) == (50257, 1024)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == pretrained.GPT2_SIZES[name]
    assert n_params_formula(cfg) == n_params
    assert pretrained.hf_config(cfg)["n_inner"] is None


# ------------------------------------------------------------------------------ clear errors


def _broken(tensors, change):
    t = dict(tensors)
    change(t)
    return t


C = SMALL["n_embd"]
BROKEN = {
    "missing": (lambda t: t.pop("h.1.mlp.c_fc.bias"),
                r"lacks the tensor 'h.1.mlp.c_fc.bias'.*n_layer=2"),
    "extra layer": (lambda t: t.update({"h.2.ln_1.weight": np.ones(C, np.float32)}),
                    r"does not have: \['h.2.ln_1.weight'\].*fewer layers"),
    "mis-shaped": (lambda t: t.update({"h.0.attn.c_attn.weight": np.ones((C, 3 * C - 1),
                                                                         np.float32)}),
                   r"'h.0.attn.c_attn.weight' .*shape \(64, 191\).*calls for \(64, 192\)"),
    "non-finite": (lambda t: t["h.0.mlp.c_proj.weight"].__setitem__((0, 0), np.nan),
                   r"'h.0.mlp.c_proj.weight' .*NaN or infinite"),
    "untied head": (lambda t: t.update({"lm_head.weight": np.zeros((300, C), np.float32)}),
                    r"lm_head.weight differs from wte.weight.*tie_word_embeddings"),
    "integers": (lambda t: t.update({"ln_f.bias": np.zeros(C, np.int32)}),
                 r"'ln_f.bias' .*stored as I32"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_bad_tensors_are_named(tmp_path, tensors, case):
    change, problem = BROKEN[case]
    t = _broken({k: v.copy() for k, v in tensors.items()}, change)
    with pytest.raises(ValueError, match=problem):
        pretrained.load_gpt2(write(tmp_path, t))


def test_truncated_file_is_named(tmp_path, folder):
    data = (folder / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors "
                                         r"file.*interrupted download.*delete it"):
        pretrained.load_gpt2(tmp_path)


def test_both_prefixes_at_once(tmp_path, tensors):
    t = dict(tensors)
    save_file({**{"transformer." + k: v for k, v in t.items()}, "wpe.weight": t["wpe.weight"]},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    with pytest.raises(ValueError, match="'wpe.weight'.*prefix"):
        pretrained.load_gpt2(tmp_path)


@pytest.mark.parametrize("change, problem", [
    ({"activation_function": "relu"}, "activation_function='relu'.*tanh form"),
    ({"activation_function": "gelu"}, "activation_function='gelu'"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ({"scale_attn_weights": False}, "scale_attn_weights=False"),
    ({"add_cross_attention": True}, "add_cross_attention=True"),
    ({"model_type": "llama"}, "'llama' model, not GPT-2"),
    ({"n_head": 5}, "d_model=64 must be divisible by n_heads=5"),
    ({"n_layer": 0}, "n_layers must be a positive integer"),
])
def test_config_settings_the_course_cannot_run(tmp_path, tensors, change, problem):
    with pytest.raises(ValueError, match=problem):
        pretrained.load_gpt2(write(tmp_path, tensors, {**SMALL, **change}))


def test_config_accepts_what_computes_the_same(tensors, ids, tmp_path, folder):
    """reorder_and_upcast_attn changes only rounding; gelu_pytorch_tanh is gelu_new; n_inner =
    4 * n_embd is the default width."""
    config = {**SMALL, "reorder_and_upcast_attn": True,
              "activation_function": "gelu_pytorch_tanh", "n_inner": 4 * C}
    model = pretrained.load_gpt2(write(tmp_path, tensors, config))
    assert model.cfg == pretrained.load_gpt2(folder).cfg
    assert model.cfg.mlp_hidden is None


def test_config_lacking_a_size(tmp_path, tensors):
    config = {k: v for k, v in SMALL.items() if k != "n_head"}
    with pytest.raises(ValueError, match=r"lacks \['n_head'\]"):
        pretrained.load_gpt2(write(tmp_path, tensors, config))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        pretrained.load_gpt2(tmp_path)


def test_missing_files_and_bad_names(tmp_path, folder):
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        pretrained.load_gpt2(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no vocab.json"):
        pretrained.load_gpt2_tokenizer(folder)
    with pytest.raises(ValueError, match="neither a GPT-2 name .*gpt2-xl.* nor an existing"):
        pretrained.load_gpt2(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is a file: pass the folder"):
        pretrained.load_gpt2(folder / "config.json")
    with pytest.raises(ValueError, match="Unknown GPT-2 size 'gpt3'"):
        pretrained.gpt2_config("gpt3")


# ------------------------------------------------------------------------------ where files come from


def test_offline_download_error_says_what_to_do(tmp_path, monkeypatch):
    """No network and nothing cached: the error names the local folder and the variable."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # fail at once, without network
    monkeypatch.delenv(pretrained.GPT2_DIR_ENV, raising=False)
    with pytest.raises(OSError, match=r"(?s)config.json of gpt2 .*openai-community/gpt2.*"
                                      r"load_gpt2\('/path/to/folder'\).*COURSE_GPT2_DIR"):
        pretrained.load_gpt2("gpt2", cache_dir=tmp_path)


def test_named_model_from_the_offline_folder(tmp_path, monkeypatch, tensors, ids, folder):
    bpe = BPETokenizer.train("a small text for a small tokenizer " * 10, vocab_size=260)
    target = write(tmp_path / "gpt2-medium", tensors)
    bpe.to_gpt2_files(target)
    monkeypatch.setenv(pretrained.GPT2_DIR_ENV, str(tmp_path))
    model = pretrained.load_gpt2("gpt2-medium")  # read from $COURSE_GPT2_DIR/gpt2-medium
    assert np.array_equal(model(jnp.asarray(ids)), pretrained.load_gpt2(folder)(jnp.asarray(ids)))
    assert pretrained.load_gpt2_tokenizer("gpt2-medium").vocab_size == 261
    with pytest.raises(FileNotFoundError, match=r"COURSE_GPT2_DIR is set .*gpt2-xl is not a "
                                                r"folder.*or unset COURSE_GPT2_DIR"):
        pretrained.load_gpt2("gpt2-xl")
    monkeypatch.chdir(tmp_path)  # a Path, or "./gpt2-medium", is a folder, never a name
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        pretrained.load_gpt2(Path("gpt2-medium") / "..")
    assert pretrained.load_gpt2(Path("gpt2-medium")).cfg == model.cfg
    assert pretrained.load_gpt2("./gpt2-medium").cfg == model.cfg


def test_download_path_uses_the_hub_cache(tmp_path, monkeypatch, tensors, ids, folder):
    """What load_gpt2 asks huggingface_hub for, with a stand-in that serves a sharded model from
    a folder: config.json, then model.safetensors (missing here), then the index and shards."""
    import huggingface_hub

    served = tmp_path / "served"
    served.mkdir()
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:10]}, str(served / "a.safetensors"))
    save_file({k: tensors[k] for k in names[10:]}, str(served / "b.safetensors"))
    weight_map = {k: ("a" if i < 10 else "b") + ".safetensors" for i, k in enumerate(names)}
    (served / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (served / "config.json").write_text(json.dumps(SMALL))
    asked = []

    def fake_download(repo_id, filename, cache_dir=None, **kwargs):
        asked.append((repo_id, filename, cache_dir))
        if not (served / filename).exists():
            raise FileNotFoundError(f"{filename} is not in {repo_id}")
        return str(served / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.delenv(pretrained.GPT2_DIR_ENV, raising=False)
    model = pretrained.load_gpt2("gpt2-large", cache_dir=tmp_path / "cache")
    assert np.array_equal(model(jnp.asarray(ids)), pretrained.load_gpt2(folder)(jnp.asarray(ids)))
    repo = "openai-community/gpt2-large"
    assert [f for r, f, _ in asked] == ["config.json", "model.safetensors",
                                        "model.safetensors.index.json", "a.safetensors",
                                        "b.safetensors"]
    assert {(r, c) for r, _, c in asked} == {(repo, tmp_path / "cache")}
    (served / "model.safetensors.index.json").unlink()  # neither form: the first error is told
    with pytest.raises(OSError, match="model.safetensors of gpt2-large.*FileNotFoundError"):
        pretrained.load_gpt2("gpt2-large")


def test_find_gpt2_never_downloads_unasked(tmp_path, monkeypatch, tensors):
    """The order: $COURSE_GPT2_DIR, the Hugging Face cache, a download only on Colab or when
    asked, else None; and it never touches the network deciding."""
    import huggingface_hub

    from course_lib import runtime

    def no_network(*args, **kwargs):
        raise AssertionError("find_gpt2 must not download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.delenv(pretrained.GPT2_DIR_ENV, raising=False)
    monkeypatch.delenv(pretrained.GPT2_DOWNLOAD_ENV, raising=False)
    monkeypatch.setattr(runtime, "in_colab", lambda: False)
    empty = tmp_path / "empty-cache"
    assert pretrained.find_gpt2("gpt2", cache_dir=empty) is None
    assert pretrained.find_gpt2("gpt2", cache_dir=empty, download=True) == "gpt2"
    monkeypatch.setenv(pretrained.GPT2_DOWNLOAD_ENV, "1")
    assert pretrained.find_gpt2("gpt2-medium", cache_dir=empty) == "gpt2-medium"
    assert pretrained.find_gpt2("gpt2", cache_dir=empty, download=False) is None
    monkeypatch.delenv(pretrained.GPT2_DOWNLOAD_ENV)
    monkeypatch.setattr(runtime, "in_colab", lambda: True)
    assert pretrained.find_gpt2("gpt2", cache_dir=empty) == "gpt2"
    with pytest.raises(ValueError, match="Unknown GPT-2 size 'gpt3'"):
        pretrained.find_gpt2("gpt3")

    # An earlier download in the cache is read from the disk, whatever else is set.
    snapshot = tmp_path / "cache" / "models--openai-community--gpt2" / "snapshots" / "abc123"
    write(snapshot, tensors)
    BPETokenizer.train("a tiny text " * 20, vocab_size=260).to_gpt2_files(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    found = pretrained.find_gpt2("gpt2", cache_dir=tmp_path / "cache", download=False)
    assert found == snapshot
    assert pretrained.load_gpt2(found).cfg.n_layers == SMALL["n_layer"]

    # $COURSE_GPT2_DIR comes first, and a folder without the files is an error, not a fallback.
    monkeypatch.setenv(pretrained.GPT2_DIR_ENV, str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"COURSE_GPT2_DIR is set .*gpt2/config.json "
                                                r"does not exist.*or unset COURSE_GPT2_DIR"):
        pretrained.find_gpt2("gpt2")
    local = tmp_path / "local"
    write(local / "gpt2", tensors)
    BPETokenizer.train("a tiny text " * 20, vocab_size=260).to_gpt2_files(local / "gpt2")
    monkeypatch.setenv(pretrained.GPT2_DIR_ENV, str(local))
    assert pretrained.find_gpt2("gpt2") == local / "gpt2"


# ------------------------------------------------------------------------------ the stand-in


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """A tiny stand-in and its folder: what notebook 07 makes when GPT-2 is out of reach."""
    folder = tmp_path_factory.mktemp("standin")
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 30
    saved = pretrained.make_standin(folder, text, vocab_size=300, n_layers=2, n_heads=2,
                                    d_model=32, block_size=16)
    return saved, folder


def test_make_standin_loads_through_the_gpt2_path(standin):
    saved, folder = standin
    model, tok = pretrained.load_gpt2(folder), pretrained.load_gpt2_tokenizer(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "merges.txt",
                                                        "model.safetensors", "vocab.json"]
    cfg = model.cfg
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layers, cfg.d_model) == (301, 16, 2, 32)
    assert cfg.bias and cfg.tie_embeddings and model.cfg == saved.cfg
    assert tok.special_tokens == {ENDOFTEXT: 300} and tok.vocab_size == 301
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 301, (2, 16)))
    assert np.abs(model(ids) - saved(ids)).max() < 1e-5
    assert tok.decode(tok.encode("Before we proceed")) == "Before we proceed"


# ------------------------------------------------------------------------------ scoring text


def _nll_table(model, ids):
    """table[s, t] = -log p(ids[t] | ids[s:t]) for every start s and t in s+1 .. s+L (NaN
    elsewhere), from one forward pass per start."""
    n, L = len(ids), model.cfg.block_size
    padded = np.concatenate([ids, np.zeros(L, ids.dtype)])  # a causal model ignores what follows
    windows = jnp.asarray(np.stack([padded[s:s + L + 1] for s in range(n - 1)]))  # (n-1, L+1)
    logp = jax.nn.log_softmax(model(windows[:, :-1]), axis=-1)  # (n-1, L, V)
    picked = np.asarray(jnp.take_along_axis(logp, windows[:, 1:, None], axis=-1)[..., 0])
    table = np.full((n, n), np.nan)
    for s in range(n - 1):
        m = min(L, n - 1 - s)  # the real tokens predicted from this start
        table[s, s + 1:s + 1 + m] = -picked[s, :m]
    return table


def test_token_nll_windows_give_each_token_its_context(folder):
    model = pretrained.load_gpt2(folder)  # large random weights: the context matters
    n, L = 60, model.cfg.block_size
    ids = np.random.default_rng(2).integers(0, model.cfg.vocab_size, n)
    table = _nll_table(model, ids)
    # stride 1: every token after the first window is predicted from the L tokens before it
    nll = pretrained.token_nll(model, ids, stride=1)
    assert nll.shape == (n - 1,)
    want = [table[max(0, t - L), t] for t in range(1, n)]
    assert np.abs(nll - want).max() < 1e-4
    # a longer stride: each token keeps at least L - stride tokens of context (or all before it)
    stride = 10
    nll = pretrained.token_nll(model, ids, stride=stride)
    for t in range(1, n):
        found = [s for s in range(max(0, t - L), t) if abs(table[s, t] - nll[t - 1]) < 1e-4]
        assert len(found) == 1 and t - found[0] >= min(t, L - stride), (t, found)
    # a text shorter than the context: one window, every token sees all before it
    want = [table[0, t] for t in range(1, 9)]
    assert np.abs(pretrained.token_nll(model, ids[:9]) - want).max() < 1e-4


def test_token_nll_bad_input(standin):
    model = standin[0]
    with pytest.raises(ValueError, match="at least 2 tokens"):
        pretrained.token_nll(model, [3])
    with pytest.raises(ValueError, match="stride must be an integer from 1 to 16"):
        pretrained.token_nll(model, list(range(40)), stride=0)
    with pytest.raises(TypeError, match="Pass a GPT"):
        pretrained.token_nll(lambda x: x, [1, 2, 3])


def test_bits_per_char():
    nll = np.array([1.0, 2.0, 3.0]) * np.log(2.0)  # 1 + 2 + 3 = 6 bits
    assert pretrained.bits_per_char(nll, 4) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="n_chars must be a positive integer"):
        pretrained.bits_per_char(nll, 0)


def test_score_continuations_equal_one_by_one_and_greedy(standin):
    """Batched and right-padded scores equal continuation_logprob of each unpadded sequence;
    'greedy' is True exactly when greedy generation writes the continuation."""
    model = standin[0]
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(0, 300, n)) for n in (3, 7, 1, 5)]
    greedy_out = generate.generate(model, jnp.asarray([prompts[1]]), 4, key=jax.random.key(0),
                                   temperature=0)[0, 7:]
    conts = [list(rng.integers(0, 300, 2)), [int(i) for i in greedy_out],
             list(rng.integers(0, 300, 6)), [int(greedy_out[0]) + 1]]
    scores = pretrained.score_continuations(model, prompts, conts, batch_size=3)
    assert list(scores.n_tokens) == [2, 4, 6, 1]
    forward = nnx.jit(lambda m, x: m(x))  # each sequence alone, unpadded (a compile per length)
    for p, c, lp in zip(prompts, conts, scores.logprob):
        seq = jnp.asarray(p + c)
        assert abs(lp - pretrained.continuation_logprob(forward(model, seq[None, :-1])[0], seq,
                                                        len(p))) < 1e-4
    assert scores.greedy[1] and not scores.greedy[3]
    with pytest.raises(ValueError, match="one continuation per prompt"):
        pretrained.score_continuations(model, prompts, conts[:2])
    with pytest.raises(ValueError, match="Pair 0 has an empty continuation"):
        pretrained.score_continuations(model, [[1]], [[]])
    with pytest.raises(ValueError, match="Pair 0 has 20 tokens; the model reads at most 16"):
        pretrained.score_continuations(model, [list(range(18))], [[1, 2]])


def test_split_qkv():
    w = np.arange(24).reshape(2, 12)
    q, k, v = pretrained.split_qkv(w)
    assert np.array_equal(np.concatenate([q, k, v], axis=1), w) and q.shape == (2, 4)
    with pytest.raises(ValueError, match="not a multiple of 3"):
        pretrained.split_qkv(np.zeros((2, 10)))


def test_instruction_arrays(standin):
    from course_lib.instructions import Example

    tok = pretrained.load_gpt2_tokenizer(standin[1])
    examples = [Example("upper", "Write cat in capitals.", "CAT", "cat"),
                Example("count", "How many letters are in horse?", "5", "horse")]
    arrays = pretrained.instruction_arrays(tok, examples, 80)
    assert arrays.tokens.shape == arrays.mask.shape == (2, 81)
    end = tok.special_tokens[ENDOFTEXT]
    for row, mask, ex in zip(arrays.tokens, arrays.mask, examples):
        prompt = pretrained.INSTRUCTION_TEMPLATE.format(prompt=ex.prompt)
        n = len(tok.encode(prompt))
        assert tok.decode(row[:n]) == prompt and not mask[:n].any()
        assert list(row[mask]) == tok.encode(ex.response) + [end]  # the response and its end
        assert (row[mask.nonzero()[0][-1] + 1:] == end).all()  # padding, outside the mask
    with pytest.raises(ValueError, match="more than length \\+ 1 = 11"):
        pretrained.instruction_arrays(tok, examples, 10)
    with pytest.raises(ValueError, match="no <\\|endoftext\\|> token"):
        pretrained.instruction_arrays(BPETokenizer.train("the cat sat on the mat " * 10, 260), examples, 80)
