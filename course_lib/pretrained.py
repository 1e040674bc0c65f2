"""GPT-2's published weights and tokenizer in the course's own GPT.

``load_gpt2("gpt2")`` returns a ``course_lib.model.GPT`` holding OpenAI's GPT-2 (124M
parameters); "gpt2-medium" (355M), "gpt2-large" (774M) and "gpt2-xl" (1.5B) name the larger ones,
and a path names a local folder with the same files. ``load_gpt2_tokenizer`` returns GPT-2's
tokenizer: the course's ``BPETokenizer`` reading GPT-2's ``vocab.json`` and ``merges.txt``.

GPT-2 *is* the course's GPT with its default design: learned position embeddings, pre-LayerNorm
blocks with biases, GELU in its tanh form, an output layer tied to the token embedding;
vocabulary 50,257, context 1,024. Only the names and the packing of the weights differ. The
checkpoints come in Hugging Face's layout (``model.safetensors``, read here with numpy: no
PyTorch needed), where ``h.{i}`` is block i and every name may carry a ``transformer.`` prefix:

    wte.weight (V, C), wpe.weight (T, C)            -> wte, wpe (embedding tables)
    h.{i}.ln_1.weight / .bias (C,)                   -> blocks[i].ln1 (scale / bias); ln_2 -> ln2
    h.{i}.attn.c_attn.weight (C, 3C), .bias (3C,)    -> blocks[i].attn.q, k, v: the fused
                                                        projection, split in three along its outputs
    h.{i}.attn.c_proj.weight (C, C), .bias (C,)      -> blocks[i].attn.proj
    h.{i}.mlp.c_fc.weight (C, 4C), .bias (4C,)       -> blocks[i].mlp.fc
    h.{i}.mlp.c_proj.weight (4C, C), .bias (C,)      -> blocks[i].mlp.proj
    ln_f.weight / .bias (C,)                         -> ln_f

GPT-2's layers ("Conv1D") store each weight as (inputs, outputs), exactly like the kernel of an
``nnx.Linear``, so nothing is transposed. The buffers ``h.{i}.attn.bias`` / ``masked_bias`` (the
causal mask, not weights) are skipped, and so is ``lm_head.weight``: the output layer is the token
table read backwards.

Where the files come from: a named model is read from ``$COURSE_GPT2_DIR/<name>/`` when that
environment variable is set (offline use), else downloaded from the Hugging Face Hub with
``huggingface_hub`` and cached (in ``~/.cache/huggingface`` by default: the second load reads
the disk). ``save_gpt2`` writes a course GPT in the same layout, so a checkpoint of any size can
be made without a network connection, e.g. a randomly initialised one for tests.
``find_gpt2`` decides, without touching the network, where a run can get GPT-2 (the folder of
``$COURSE_GPT2_DIR``, the Hugging Face cache, a download on Colab or when
``$COURSE_GPT2_DOWNLOAD=1``, or nowhere); ``make_standin`` writes the small random model in
GPT-2's files that notebook 07 uses when it is nowhere.

Using a loaded model (notebook 07): ``token_nll`` scores every token of a long text in sliding
windows and ``bits_per_char`` turns that into bits per character, comparable across
tokenizers; ``score_continuations`` (and its one-sequence definition ``continuation_logprob``)
scores continuations of prompts, for few-shot prompts and log-likelihood multiple choice;
``instruction_arrays`` encodes instruction examples in a plain-text template
(``INSTRUCTION_TEMPLATE``) for ``finetune.sft_batch``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib.data import in_batches
from course_lib.finetune import masked_scores
from course_lib.model import GPT, GPTConfig
from course_lib.tokenizers import ENDOFTEXT, BPETokenizer

# The four sizes OpenAI released, and where the Hugging Face Hub keeps them.
GPT2_REPOS = {
    "gpt2": "openai-community/gpt2",  # 124M parameters
    "gpt2-medium": "openai-community/gpt2-medium",  # 355M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1.5B
}
GPT2_SIZES = {  # name -> (n_layer, n_embd, n_head)
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}
GPT2_DIR_ENV = "COURSE_GPT2_DIR"  # offline: $COURSE_GPT2_DIR/gpt2/ holds the files of "gpt2"
GPT2_DOWNLOAD_ENV = "COURSE_GPT2_DOWNLOAD"  # =1: find_gpt2 may download from the Hub

CONFIG, WEIGHTS, WEIGHTS_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
VOCAB, MERGES = "vocab.json", "merges.txt"

# GELU's tanh approximation under the names transformers gives it: what jax.nn.gelu computes.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Attention-mask buffers that older checkpoints carry next to the weights.
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


# ------------------------------------------------------------------------------ configuration


def gpt2_config(name: str = "gpt2") -> dict:
    """The ``config.json`` of a released GPT-2 size, as Hugging Face writes it (every field the
    loader reads), e.g. to build or save a random model of the real shape offline."""
    if name not in GPT2_SIZES:
        raise ValueError(f"Unknown GPT-2 size {name!r}: choose one of {list(GPT2_SIZES)}.")
    n_layer, n_embd, n_head = GPT2_SIZES[name]
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024,
        "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "add_cross_attention": False,
        "tie_word_embeddings": True, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
        "bos_token_id": 50256, "eos_token_id": 50256,
    }


def config_from_hf(hf: dict, *, dtype=jnp.float32, source: str = CONFIG) -> GPTConfig:
    """A Hugging Face GPT-2 ``config.json`` (as a dict) -> the course's ``GPTConfig``.

    Settings the course's GPT cannot compute (another activation, attention scaled by layer,
    cross-attention) are a ValueError naming the setting: loading such weights would give wrong
    outputs silently. ``reorder_and_upcast_attn`` only changes the floating-point order of the
    same computation and is accepted. ``dtype`` is the compute dtype (parameters stay float32).
    """
    if not isinstance(hf, dict):
        raise ValueError(f"{source} must hold a JSON object, got {type(hf).__name__}.")
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{source} describes a {model_type!r} model, not GPT-2 (model_type "
                         "'gpt2'): load_gpt2 reads GPT-2 checkpoints only.")
    missing = [k for k in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd")
               if k not in hf]
    if missing:
        raise ValueError(f"{source} lacks {missing}: a GPT-2 config.json gives the vocabulary "
                         "size, context, layers, heads and width (see gpt2_config()).")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _TANH_GELU:
        raise ValueError(
            f"{source}: activation_function={activation!r}, but the course's MLP applies GELU in "
            "its tanh form (jax.nn.gelu; GPT-2's 'gelu_new'). Weights trained with another "
            "activation would give wrong outputs.")
    unsupported = {  # key: (the value the course cannot run, what it means)
        "scale_attn_weights": (False, "leaves out the 1/sqrt(head_dim) scaling of attention "
                                      "scores"),
        "scale_attn_by_inverse_layer_idx": (True, "divides attention scores by the layer "
                                                  "number"),
        "add_cross_attention": (True, "adds cross-attention to an encoder"),
    }
    for key, (bad, meaning) in unsupported.items():
        if bool(hf.get(key, not bad)) == bad:
            raise ValueError(f"{source}: {key}={bad} {meaning}, which the course's GPT does not "
                             "do: this checkpoint cannot run in it.")
    d_model, n_inner = hf["n_embd"], hf.get("n_inner")
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layers=hf["n_layer"],
            n_heads=hf["n_head"], d_model=d_model, bias=True,
            ln_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            mlp_hidden=None if n_inner in (None, 4 * d_model) else n_inner,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)), dtype=dtype,
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from None


def expected_tensors(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a GPT-2 checkpoint of this config holds, by name (no ``transformer.``
    prefix), with its shape in Hugging Face's layout."""
    C, V, T, H = cfg.d_model, cfg.vocab_size, cfg.block_size, cfg.hidden
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C)}
    for i in range(cfg.n_layers):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, H), h + "mlp.c_fc.bias": (H,),
            h + "mlp.c_proj.weight": (H, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)  # PyTorch's Linear layout: (outputs, inputs)
    return shapes


def _describe(cfg: GPTConfig) -> str:
    return (f"n_layer={cfg.n_layers}, n_embd={cfg.d_model}, n_head={cfg.n_heads}, "
            f"vocab_size={cfg.vocab_size}, n_positions={cfg.block_size}")


# ------------------------------------------------------------------------------ finding files


def _local_folder(name_or_path) -> Path | None:
    """The folder to read for a name or path; None when a named model is to be downloaded.
    Only a str can be a name: a ``Path("gpt2")`` is always a folder."""
    name = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and name in GPT2_REPOS:
        root = os.environ.get(GPT2_DIR_ENV)
        if not root:
            return None
        folder = Path(root).expanduser() / name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{GPT2_DIR_ENV} is set to {root!r}, but {folder} is not a folder. Put "
                f"{CONFIG}, {WEIGHTS}, {VOCAB} and {MERGES} of {name} there, or unset "
                f"{GPT2_DIR_ENV} to download them from the Hugging Face Hub.")
        return folder
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise ValueError(f"{folder} is a file: pass the folder that holds {CONFIG}, {WEIGHTS}, "
                         f"{VOCAB} and {MERGES}.")
    raise ValueError(f"{name!r} is neither a GPT-2 name ({', '.join(GPT2_REPOS)}) nor an "
                     f"existing folder. A local model is a folder holding {CONFIG} and "
                     f"{WEIGHTS} (and {VOCAB}, {MERGES} for its tokenizer).")


def _in_folder(folder: Path, filename: str) -> Path:
    path = folder / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {filename}. A GPT-2 folder holds {CONFIG}, {WEIGHTS}, {VOCAB} and "
            f"{MERGES}, the files of the model's page on the Hugging Face Hub.")
    return path


def _from_hub(name: str, filename: str, cache_dir) -> Path:
    """One file of a named model, downloaded once and then read from the local cache."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ImportError(f"Downloading {name} needs huggingface_hub (pip install "
                          "huggingface_hub), or pass the path of a folder that holds its "
                          "files.") from None
    repo = GPT2_REPOS[name]
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir))
    except Exception as e:  # offline, a proxy, a server error: all end the same way
        raise OSError(
            f"Could not get {filename} of {name} from the Hugging Face Hub ({repo}): "
            f"{type(e).__name__}: {e}\nWithout a connection, copy {CONFIG}, {WEIGHTS}, {VOCAB} "
            f"and {MERGES} of {name} into a folder and pass its path, load_gpt2('/path/to/"
            f"folder'), or set {GPT2_DIR_ENV}=/path so that /path/{name}/ holds them.") from e


def _files(name_or_path, filenames: tuple[str, ...], cache_dir) -> dict[str, Path]:
    folder = _local_folder(name_or_path)
    if folder is None:
        return {f: _from_hub(os.fspath(name_or_path), f, cache_dir) for f in filenames}
    return {f: _in_folder(folder, f) for f in filenames}


def _shards(index_path: Path, get: Callable[[str], Path]) -> list[Path]:
    """The weight files listed by a sharded checkpoint's index (weight name -> file name)."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index_path} is not a safetensors index (a JSON object with a "
                         f"'weight_map'): {e}") from None
    return [get(n) for n in names]


def _weight_files(name_or_path, cache_dir) -> list[Path]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    folder = _local_folder(name_or_path)
    if folder is not None:
        if (folder / WEIGHTS).is_file() or not (folder / WEIGHTS_INDEX).is_file():
            return [_in_folder(folder, WEIGHTS)]
        return _shards(folder / WEIGHTS_INDEX, lambda n: _in_folder(folder, n))
    name = os.fspath(name_or_path)
    try:
        return [_from_hub(name, WEIGHTS, cache_dir)]
    except OSError as first:  # perhaps sharded; if not, the first error says what went wrong
        try:
            index = _from_hub(name, WEIGHTS_INDEX, cache_dir)
        except OSError:
            raise first from first.__cause__
        return _shards(index, lambda n: _from_hub(name, n, cache_dir))


def model_files(name_or_path="gpt2", *, cache_dir=None) -> dict[str, object]:
    """The local paths of a model's files: ``{"config": path, "weights": [paths]}`` (one
    weights file, or the shards of a large checkpoint), downloading a named model if needed."""
    config = _files(name_or_path, (CONFIG,), cache_dir)[CONFIG]
    return {"config": config, "weights": _weight_files(name_or_path, cache_dir)}


# ------------------------------------------------------------------------------ reading weights


class _Checkpoint:
    """The tensors of one or more safetensors files, found by name (``transformer.`` dropped)
    and read one at a time, so that loading never holds two copies of the model."""

    def __init__(self, paths: list[Path], stack: contextlib.ExitStack):
        from safetensors import safe_open

        self.where: dict[str, tuple[object, str, Path]] = {}
        for path in paths:
            try:
                handle = stack.enter_context(safe_open(os.fspath(path), framework="numpy"))
            except Exception as e:
                raise ValueError(
                    f"{path} is not a readable safetensors file ({e}). An interrupted download "
                    "or copy leaves such a file: delete it and load again (the Hugging Face "
                    "cache is in ~/.cache/huggingface by default), or copy it again.") from None
            for key in handle.keys():
                name = key.removeprefix("transformer.")
                if name in self.where:
                    raise ValueError(f"{path} and {self.where[name][2]} both hold {name!r} (with "
                                     "and without the 'transformer.' prefix?): keep one.")
                self.where[name] = (handle, key, path)

    def shape(self, name: str) -> tuple[int, ...]:
        handle, key, _ = self.where[name]
        return tuple(handle.get_slice(key).get_shape())

    def get(self, name: str) -> np.ndarray:
        """One tensor as float32, checked to be finite."""
        handle, key, path = self.where[name]
        kind = handle.get_slice(key).get_dtype()
        if kind not in ("F32", "F16", "F64"):
            raise ValueError(f"{name!r} in {path} is stored as {kind}, which numpy cannot read "
                             "here: save the checkpoint in float32 (GPT-2's published files "
                             "are float32).")
        tensor = np.asarray(handle.get_tensor(key), dtype=np.float32)
        if not np.isfinite(tensor).all():
            raise ValueError(f"{name!r} in {path} holds NaN or infinite values: the file is "
                             "corrupt (download or copy it again) or the model diverged.")
        return tensor


def _check_tensors(ckpt: _Checkpoint, cfg: GPTConfig, source: str) -> None:
    """Every expected tensor present with its shape, nothing unknown: else a ValueError naming
    the tensor and the likely fix."""
    expected = expected_tensors(cfg)
    names = set(ckpt.where)
    missing = [n for n in expected if n not in names]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(
            f"{source} lacks the tensor {missing[0]!r}{more} that its config calls for "
            f"({_describe(cfg)}). The config and the weights must come from the same model: "
            "download or copy both again.")
    ignored = {n for n in names if _BUFFER.fullmatch(n)}
    if cfg.tie_embeddings:
        ignored.add("lm_head.weight")  # checked to equal wte.weight while loading
    unknown = sorted(names - expected.keys() - ignored)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise ValueError(
            f"{source} holds tensors a GPT-2 of its config ({_describe(cfg)}) does not have: "
            f"{unknown[:3]}{more}. Is it another architecture, or does the config give fewer "
            "layers than the weights? Use the config.json that came with the weights.")
    wanted = dict(expected)
    if cfg.tie_embeddings and "lm_head.weight" in names:
        wanted["lm_head.weight"] = (cfg.vocab_size, cfg.d_model)
    for name, shape in wanted.items():
        found = ckpt.shape(name)
        if found != shape:
            raise ValueError(
                f"{name!r} in {source} has shape {found}, but its config ({_describe(cfg)}) "
                f"calls for {shape}. The config and the weights must come from the same model.")


def split_qkv(fused):
    """GPT-2's fused attention projection ``c_attn`` -> its query, key and value parts.

    ``c_attn`` computes q, k and v with one matrix: its weight (C, 3C) maps the input to the
    three results side by side, ``[q | k | v]`` (C outputs each, every head's slice inside
    them), and its bias (3C,) is laid out the same way. Splitting the last axis in three equal
    blocks gives the (C, C) kernels (or (C,) biases) of the course's separate ``q``, ``k`` and
    ``v`` layers. Works on numpy and JAX arrays; returns a tuple of three."""
    width = fused.shape[-1]
    if width % 3:
        raise ValueError(f"A fused q/k/v tensor has 3 * C outputs on its last axis; this one has "
                         f"{width}, not a multiple of 3 (shape {tuple(fused.shape)}).")
    c = width // 3
    return fused[..., :c], fused[..., c:2 * c], fused[..., 2 * c:]


def _course_params(cfg: GPTConfig, ckpt: _Checkpoint) -> dict:
    """The GPT's parameters as a nested dict (``nnx.State.to_pure_dict``'s layout), each tensor
    read from the checkpoint, renamed, and the fused q/k/v projection split."""

    def get(name):
        return jnp.asarray(ckpt.get(name))

    def linear(prefix):  # Conv1D weight (in, out) = nnx.Linear kernel (in, out)
        return {"kernel": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

    def norm(prefix):
        return {"scale": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

    blocks = {}
    for i in range(cfg.n_layers):
        h = f"h.{i}."
        w = split_qkv(ckpt.get(h + "attn.c_attn.weight"))  # (C, 3C) -> 3 x (C, C)
        b = split_qkv(ckpt.get(h + "attn.c_attn.bias"))  # (3C,) -> 3 x (C,)
        attn = {name: {"kernel": jnp.asarray(w[j]), "bias": jnp.asarray(b[j])}
                for j, name in enumerate(("q", "k", "v"))}
        attn["proj"] = linear(h + "attn.c_proj")
        blocks[i] = {"ln1": norm(h + "ln_1"), "attn": attn, "ln2": norm(h + "ln_2"),
                     "mlp": {"fc": linear(h + "mlp.c_fc"), "proj": linear(h + "mlp.c_proj")}}
    wte = ckpt.get("wte.weight")
    if cfg.tie_embeddings and "lm_head.weight" in ckpt.where:
        if not np.array_equal(ckpt.get("lm_head.weight"), wte):
            raise ValueError(
                "lm_head.weight differs from wte.weight, but the config ties them "
                "(tie_word_embeddings true or absent): set \"tie_word_embeddings\": false in "
                "config.json if the model has its own output layer.")
    params = {"wte": {"embedding": jnp.asarray(wte)}, "wpe": {"embedding": get("wpe.weight")},
              "blocks": blocks, "ln_f": norm("ln_f")}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": jnp.asarray(ckpt.get("lm_head.weight").T)}  # (C, V)
    return params


def _concrete(abstract: jax.ShapeDtypeStruct, index: int) -> jax.Array:
    """A value for one abstract non-weight leaf: a fresh random key (one per stream) or a zero
    counter."""
    if jax.dtypes.issubdtype(abstract.dtype, jax.dtypes.prng_key):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(0), index),
                                max(1, int(np.prod(abstract.shape))))
        return keys.reshape(abstract.shape)
    return jnp.zeros(abstract.shape, abstract.dtype)


def _gpt_from_params(cfg: GPTConfig, params: dict) -> GPT:
    """A GPT holding ``params``, built without initialising random weights first: the layers
    are traced abstractly (``nnx.eval_shape``: shapes only, no memory), the weights filled in
    from ``params``, and the little non-weight state (the dropout layers' random-number
    streams) made fresh."""
    abstract = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    graphdef, weights, others = nnx.split(abstract, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(others)
    others = jax.tree.unflatten(treedef, [_concrete(x, i) for i, x in enumerate(leaves)])
    nnx.replace_by_pure_dict(weights, params)
    return nnx.merge(graphdef, weights, others)


def load_gpt2(name_or_path="gpt2", *, dtype=jnp.float32, cache_dir=None) -> GPT:
    """The course's ``GPT`` holding a GPT-2 checkpoint's weights, in eval mode.

    name_or_path: "gpt2", "gpt2-medium", "gpt2-large" or "gpt2-xl" (downloaded once with
    ``huggingface_hub`` and cached, or read from ``$COURSE_GPT2_DIR/<name>/``), or the path of
    a folder holding ``config.json`` and ``model.safetensors`` in Hugging Face's GPT-2 layout
    (a relative folder named like a model: pass "./gpt2" or a ``Path``). dtype: the compute dtype, e.g.
    ``jnp.bfloat16`` (the weights stay float32). cache_dir: where downloads are cached
    (huggingface_hub's default if None).

    Every tensor is checked against the config before the model is built: a missing, unknown,
    mis-shaped, non-finite or truncated tensor is a ValueError naming it. The tokenizer is
    separate: ``load_gpt2_tokenizer(name_or_path)``.
    """
    files = model_files(name_or_path, cache_dir=cache_dir)
    config_path = files["config"]
    try:
        hf = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}): download or copy it "
                         "again.") from None
    cfg = config_from_hf(hf, dtype=dtype, source=str(config_path))
    weights = files["weights"]
    source = str(weights[0]) if len(weights) == 1 else f"the {len(weights)} shards in " \
        f"{weights[0].parent}"
    with contextlib.ExitStack() as stack:
        ckpt = _Checkpoint(weights, stack)
        _check_tensors(ckpt, cfg, source)
        params = _course_params(cfg, ckpt)
    model = _gpt_from_params(cfg, params)
    model.eval()
    return model


def load_gpt2_tokenizer(name_or_path="gpt2", *, cache_dir=None) -> BPETokenizer:
    """GPT-2's tokenizer (``vocab.json`` and ``merges.txt``) as the course's ``BPETokenizer``,
    found like ``load_gpt2``'s files: 50,257 tokens, <|endoftext|> = 50256."""
    files = _files(name_or_path, (VOCAB, MERGES), cache_dir)
    return BPETokenizer.from_gpt2_files(files[VOCAB], files[MERGES])


# ------------------------------------------------------------------------------ writing


def hf_config(cfg: GPTConfig) -> dict:
    """The Hugging Face ``config.json`` of a course GPTConfig in GPT-2's design (the inverse of
    ``config_from_hf``). A ValueError names an option GPT-2 has no place for."""
    options = {"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu"}
    for key, gpt2 in options.items():
        if getattr(cfg, key) != gpt2:
            raise ValueError(f"GPT-2's layout has no place for {key}={getattr(cfg, key)!r}; only "
                             f"{key}={gpt2!r} models can be saved as GPT-2.")
    if cfg.kv_heads != cfg.n_heads:
        raise ValueError(f"GPT-2's layout has no grouped-query attention (n_kv_heads="
                         f"{cfg.n_kv_heads}); only n_kv_heads=None models can be saved as GPT-2.")
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_layer": cfg.n_layers, "n_embd": cfg.d_model, "n_head": cfg.n_heads,
        "n_inner": None if cfg.hidden == 4 * cfg.d_model else cfg.hidden,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.ln_eps,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "add_cross_attention": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": 0.0,
    }


def save_gpt2(model: GPT, folder, *, tokenizer: BPETokenizer | None = None) -> Path:
    """Write a course GPT of GPT-2's design as ``config.json`` + ``model.safetensors`` in
    Hugging Face's GPT-2 layout (and, given a tokenizer, its ``vocab.json`` and ``merges.txt``)
    into ``folder``; returns the folder. ``load_gpt2(folder)`` and transformers'
    ``GPT2LMHeadModel.from_pretrained(folder)`` read it. A model without biases
    (``bias=False``) is written with zero biases, which compute the same function."""
    from safetensors.numpy import save_file

    cfg = model.cfg
    config = hf_config(cfg)
    if tokenizer is not None:
        n_tokens = tokenizer.vocab_size + (ENDOFTEXT not in tokenizer.special_tokens)
        if n_tokens > cfg.vocab_size:
            raise ValueError(f"The tokenizer has {n_tokens} tokens (<|endoftext|> included) but "
                             f"the model only {cfg.vocab_size} (vocab_size): build the model "
                             f"with vocab_size >= {n_tokens}.")
    p = nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def arr(x):
        return np.asarray(x, dtype=np.float32)

    def bias(layer, width):  # a layer's bias, or zeros when the model has none
        return arr(layer["bias"]) if "bias" in layer else np.zeros(width, np.float32)

    def linear(layer, width):
        return arr(layer["kernel"]), bias(layer, width)

    C, H = cfg.d_model, cfg.hidden
    tensors = {"wte.weight": arr(p["wte"]["embedding"]), "wpe.weight": arr(p["wpe"]["embedding"])}
    for i in range(cfg.n_layers):
        blk, h = p["blocks"][i], f"h.{i}."
        attn = blk["attn"]
        entries = {
            "ln_1": (arr(blk["ln1"]["scale"]), bias(blk["ln1"], C)),
            "attn.c_attn": (np.concatenate([arr(attn[n]["kernel"]) for n in "qkv"], axis=1),
                            np.concatenate([bias(attn[n], C) for n in "qkv"])),
            "attn.c_proj": linear(attn["proj"], C),
            "ln_2": (arr(blk["ln2"]["scale"]), bias(blk["ln2"], C)),
            "mlp.c_fc": linear(blk["mlp"]["fc"], H),
            "mlp.c_proj": linear(blk["mlp"]["proj"], C),
        }
        for name, (weight, b) in entries.items():
            tensors[h + name + ".weight"], tensors[h + name + ".bias"] = weight, b
    tensors["ln_f.weight"], tensors["ln_f.bias"] = arr(p["ln_f"]["scale"]), bias(p["ln_f"], C)
    tensors = {"transformer." + k: v for k, v in tensors.items()}  # as GPT2LMHeadModel names them
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = arr(p["lm_head"]["kernel"]).T.copy()  # (V, C)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # "format": "pt" is the metadata transformers expects of a safetensors checkpoint.
    save_file(tensors, os.fspath(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.to_gpt2_files(folder)
    return folder


# ------------------------------------------------------------------------------ where GPT-2 is


def find_gpt2(name: str = "gpt2", *, download: bool | None = None, cache_dir=None):
    """Where ``load_gpt2`` can get GPT-2 ``name`` here, decided without touching the network,
    so that it answers at once on a machine that is offline. In this order:

    1. ``$COURSE_GPT2_DIR`` is set: the folder ``$COURSE_GPT2_DIR/<name>/`` (a ``Path``). When
       it lacks a file the model needs, that is a FileNotFoundError naming the file: the
       variable says the files are there, so a silent fallback would hide a mistake.
    2. An earlier download left all four files in the Hugging Face cache (``cache_dir``, or
       huggingface_hub's default ``~/.cache/huggingface``): that cached folder (a ``Path``,
       read from the disk without asking the Hub whether a newer version exists).
    3. A download is allowed: ``download=True``, or ``download=None`` (the default) on Colab or
       with ``$COURSE_GPT2_DOWNLOAD=1``: the name itself, which ``load_gpt2`` downloads (about
       550 MB for "gpt2"). A connected laptop downloads only when asked, never by surprise.
    4. Otherwise None: GPT-2 is not reachable here, and the caller uses a stand-in
       (``make_standin``).

    ``load_gpt2(found)`` and ``load_gpt2_tokenizer(found)`` accept what this returns.
    """
    from course_lib import runtime

    if name not in GPT2_REPOS:
        raise ValueError(f"Unknown GPT-2 size {name!r}: choose one of {list(GPT2_REPOS)}.")
    root = os.environ.get(GPT2_DIR_ENV)
    if root:
        folder = Path(root).expanduser() / name
        for filename in (CONFIG, VOCAB, MERGES):
            if not (folder / filename).is_file():
                raise FileNotFoundError(
                    f"{GPT2_DIR_ENV} is set to {root!r}, but {folder / filename} does not exist. "
                    f"Put {CONFIG}, {WEIGHTS}, {VOCAB} and {MERGES} of {name} in {folder}, or "
                    f"unset {GPT2_DIR_ENV}.")
        return folder
    cached = _cached_folder(name, cache_dir)
    if cached is not None:
        return cached
    if download is None:
        flag = os.environ.get(GPT2_DOWNLOAD_ENV, "").strip().lower()
        download = runtime.in_colab() or flag in ("1", "true", "yes", "on")
    return name if download else None



def _cached_folder(name: str, cache_dir) -> Path | None:
    """The Hugging Face cache's folder holding every file of ``name``, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = [try_to_load_from_cache(GPT2_REPOS[name], f, cache_dir=cache_dir)
             for f in (CONFIG, WEIGHTS, VOCAB, MERGES)]
    if not all(isinstance(f, str) for f in found):  # None, or a marker for "not on the Hub"
        return None
    folders = {Path(f).parent for f in found}
    return folders.pop() if len(folders) == 1 else None  # one snapshot holds them all


def make_standin(folder, text: str, *, vocab_size: int = 512, n_layers: int = 4,
                 n_heads: int = 4, d_model: int = 128, block_size: int = 256,
                 seed: int = 0) -> GPT:
    """A small, randomly initialised GPT in GPT-2's design, saved in GPT-2's files, for
    machines where GPT-2 itself is out of reach. Returns the model that was saved.

    The tokenizer is a byte-level BPE trained on ``text`` (``vocab_size`` tokens, the 256
    bytes included) plus ``<|endoftext|>``; the model has learned positions, biases, tied
    embeddings and ``vocab_size + 1`` outputs. ``save_gpt2`` writes both into ``folder``, so
    ``load_gpt2(folder)`` and ``load_gpt2_tokenizer(folder)`` read them with exactly the code
    that reads GPT-2. The weights are random: the model's outputs are gibberish."""
    tok = BPETokenizer.train(text, vocab_size)
    cfg = GPTConfig(vocab_size=tok.vocab_size + 1, block_size=block_size, n_layers=n_layers,
                    n_heads=n_heads, d_model=d_model, bias=True)
    model = GPT(cfg, rngs=nnx.Rngs(seed))
    model.eval()
    save_gpt2(model, folder, tokenizer=tok)
    return model


# ------------------------------------------------------------------------------ scoring text


def _check_model(model) -> None:
    if not callable(model) or not hasattr(getattr(model, "cfg", None), "block_size"):
        raise TypeError(f"Pass a GPT (a model with cfg.block_size and cfg.vocab_size), got "
                        f"{type(model).__name__}.")


@nnx.jit
def _window_logprobs(model, windows):
    """windows (B, L + 1) -> (B, L): log p(windows[:, t + 1] | windows[:, :t + 1])."""
    logits = model(windows[:, :-1])  # (B, L, V)
    picked = jnp.take_along_axis(logits, windows[:, 1:, None], axis=-1)[..., 0]  # (B, L)
    return picked - jax.nn.logsumexp(logits, axis=-1)


def token_nll(model: GPT, ids, *, stride: int | None = None,
              batch_size: int | None = None) -> np.ndarray:
    """Negative log-likelihood (nats) of every token of ``ids`` after the first, each predicted
    from the tokens before it: an array of ``len(ids) - 1`` numbers.

    A text longer than the context is read in **sliding windows** of ``block_size`` tokens that
    start ``stride`` tokens apart (default: half the context). Each token is scored once, in
    the first window where it has at least ``block_size - stride`` tokens of context (the
    first window's tokens have what precedes them). A smaller stride gives more context and
    costs more windows. The model is put in eval mode."""
    _check_model(model)
    ids = np.asarray(ids, dtype=np.int32).reshape(-1)
    n = len(ids)
    if n < 2:
        raise ValueError(f"token_nll needs at least 2 tokens (the first one has nothing to be "
                         f"predicted from), got {n}.")
    L = min(model.cfg.block_size, n - 1)  # tokens the model reads per window
    stride = L // 2 if stride is None else stride
    if not isinstance(stride, (int, np.integer)) or not 1 <= stride <= L:
        raise ValueError(f"stride must be an integer from 1 to {L} (the window length), got "
                         f"{stride!r}.")
    starts = list(range(0, n - 1 - L + 1, stride))
    if starts[-1] != n - 1 - L:
        starts.append(n - 1 - L)  # a last window that ends with the text
    windows = np.stack([ids[s:s + L + 1] for s in starts])  # (n_windows, L + 1)
    if batch_size is None:  # about 64M logits per call at most: 256 MB in float32
        batch_size = int(np.clip(2 ** 26 // (L * model.cfg.vocab_size), 1, 32))
    model.eval()
    logp = in_batches(lambda w: _window_logprobs(model, w), (windows,), batch_size)  # (n_windows, L)
    nll = np.empty(n - 1, np.float64)  # nll[t - 1]: token t
    done = 0  # tokens 1..done are scored
    for s, row in zip(starts, logp):
        first = max(done + 1, s + 1)  # the first token this window scores
        nll[first - 1:s + L] = -row[first - s - 1:]
        done = s + L
    return nll


def bits_per_char(token_nll, n_chars: int) -> float:
    """Bits per character of a text from the negative log-likelihoods (nats) of its tokens:
    the whole text's -log2 p, ``sum(token_nll) / ln 2``, shared out over its ``n_chars``
    characters. Models with different tokenizers can be compared this way on the same text;
    their losses per token cannot (their tokens differ)."""
    nll = np.asarray(token_nll, dtype=np.float64)
    if not isinstance(n_chars, (int, np.integer)) or n_chars < 1:
        raise ValueError(f"n_chars must be a positive integer (the text's length in "
                         f"characters), got {n_chars!r}.")
    return float(nll.sum() / np.log(2.0) / n_chars)


def continuation_logprob(logits, tokens, n_prompt: int) -> float:
    """log p(continuation | prompt) of one sequence: ``tokens`` (T,) is the prompt's
    ``n_prompt`` tokens followed by the continuation's; ``logits`` (T - 1, V) is what the model
    output after reading ``tokens[:-1]``, so ``logits[t - 1]`` predicts ``tokens[t]``. Returns
    the sum over the continuation's tokens t = n_prompt .. T - 1 of log p(tokens[t])."""
    logits, tokens = jnp.asarray(logits), jnp.asarray(tokens)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (T - 1, V)
    picked = jnp.take_along_axis(logp, tokens[1:, None], axis=-1)[:, 0]  # (T - 1,): token t + 1
    return float(picked[n_prompt - 1:].sum())


class ContinuationScores(NamedTuple):
    """What a model thinks of continuations of prompts, one entry per (prompt, continuation)."""

    logprob: np.ndarray  # (N,) log p(continuation | prompt), nats
    n_tokens: np.ndarray  # (N,) the continuation's length in tokens
    greedy: np.ndarray  # (N,) bool: greedy decoding of the prompt writes exactly this


def score_continuations(model: GPT, prompts, continuations, *,
                        batch_size: int = 16) -> ContinuationScores:
    """Score each continuation (a list of token ids) after its prompt (a list of ids) in one
    forward pass per batch: its log-probability, its length, and whether greedy decoding
    would write exactly it (at every one of its positions, the most likely next token is its
    next token). Sequences are right-padded to one width (a causal model's outputs at a
    position do not depend on what comes after it), so the model compiles once."""
    _check_model(model)
    prompts, continuations = [list(p) for p in prompts], [list(c) for c in continuations]
    if len(prompts) != len(continuations) or not prompts:
        raise ValueError(f"Give one continuation per prompt (and at least one): got "
                         f"{len(prompts)} prompts and {len(continuations)} continuations.")
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if not p or not c:
            raise ValueError(f"Pair {i} has an empty {'prompt' if not p else 'continuation'}: "
                             "each needs at least one token.")
        if len(p) + len(c) - 1 > model.cfg.block_size:
            raise ValueError(f"Pair {i} has {len(p) + len(c)} tokens; the model reads at most "
                             f"{model.cfg.block_size} + 1: shorten the prompt.")
    longest = max(len(p) + len(c) for p, c in zip(prompts, continuations))
    width = min(-(-longest // 16) * 16, model.cfg.block_size + 1)  # few widths, few compiles
    tokens = np.zeros((len(prompts), width), np.int32)  # padding: id 0, outside the mask
    mask = np.zeros((len(prompts), width), bool)
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        tokens[i, :len(p) + len(c)] = p + c
        mask[i, len(p):len(p) + len(c)] = True
    model.eval()
    logprob, greedy = in_batches(lambda t, m: masked_scores(model, t, m), (tokens, mask),
                                 batch_size)
    return ContinuationScores(logprob.astype(np.float64),
                              np.array([len(c) for c in continuations]), greedy)


# ------------------------------------------------------------------------------ instructions

# GPT-2 has no chat tokens: instruction tuning uses a plain-text layout (Alpaca's), and the end
# of the answer is GPT-2's one special token.
INSTRUCTION_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


def instruction_arrays(tok: BPETokenizer, examples, length: int):
    """Instruction examples (``.prompt``, ``.response``, e.g. ``instructions.Example``) as
    ``instructions.SFTArrays`` of width ``length + 1`` for ``finetune.sft_batch``: the prompt
    in ``INSTRUCTION_TEMPLATE``, the response, then ``<|endoftext|>``; the mask is True at the
    response and its end token only; rows are padded with ``<|endoftext|>`` outside the mask."""
    from course_lib.instructions import SFTArrays

    end = tok.special_tokens.get(ENDOFTEXT)
    if end is None:
        raise ValueError(f"The tokenizer has no {ENDOFTEXT} token to end a response with: use "
                         "GPT-2's (load_gpt2_tokenizer) or one saved by save_gpt2.")
    examples = list(examples)
    if not examples:
        raise ValueError("instruction_arrays: no examples given.")
    tokens = np.full((len(examples), length + 1), end, np.int32)
    mask = np.zeros((len(examples), length + 1), bool)
    for i, ex in enumerate(examples):
        head = tok.encode(INSTRUCTION_TEMPLATE.format(prompt=ex.prompt))
        tail = tok.encode(ex.response) + [end]
        if len(head) + len(tail) > length + 1:
            raise ValueError(f"Example {i} has {len(head) + len(tail)} tokens, more than "
                             f"length + 1 = {length + 1}: pass a larger length.")
        tokens[i, :len(head) + len(tail)] = head + tail
        mask[i, len(head):len(head) + len(tail)] = True
    return SFTArrays(tokens, mask)
