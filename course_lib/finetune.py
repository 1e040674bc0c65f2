"""Post-training: from a text completer to an assistant.

- **Instruction tuning (SFT)**: train on prompt/response pairs, with the loss on the response
  tokens only (``sft_loss``).
- **LoRA**: freeze the pretrained weights and learn a low-rank change ``A @ B`` of some of them
  (``add_lora``); fold it back into the weights afterwards (``merge_lora``).
- **Frozen weights**: ``freeze`` turns a module's parameters into ``Frozen`` variables, which
  ``train.fit`` leaves alone (it trains what is an ``nnx.Param``), e.g. a classifier head on
  frozen features.
- **Preference tuning (DPO)**: make the chosen answer of a pair more likely than the rejected
  one, relative to a frozen reference model (``dpo_loss``).

Shapes: logits ``(B, T, V)``; targets and masks ``(B, T)``; per-sequence log-probabilities ``(B,)``.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from course_lib.data import in_batches

# ---------------------------------------------------------------- losses


def _check_token_arrays(logits, targets, mask, what: str) -> None:
    if logits.ndim != 3:
        raise ValueError(f"{what}: logits must have shape (batch, seq, vocab), got "
                         f"{tuple(logits.shape)}.")
    if targets.shape != logits.shape[:2] or mask.shape != logits.shape[:2]:
        raise ValueError(f"{what}: targets {tuple(targets.shape)} and mask {tuple(mask.shape)} "
                         f"must both have the shape (batch, seq) = {tuple(logits.shape[:2])} of "
                         "the logits.")


def sft_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the tokens where ``loss_mask`` is true (the response), ignoring
    the prompt and the padding: ``sum(nll * mask) / sum(mask)``.

    logits (B, T, V); targets (B, T) the next token at each position; loss_mask (B, T), bool or
    0/1, aligned with ``targets`` (True where the *target* is a response token).
    """
    logits, targets, loss_mask = jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(loss_mask)
    _check_token_arrays(logits, targets, loss_mask, "sft_loss")
    mask = loss_mask.astype(jnp.float32)
    if not isinstance(mask, jax.core.Tracer) and float(mask.sum()) == 0:
        raise ValueError("sft_loss: the loss mask selects no token, so there is nothing to learn "
                         "from. Check that each example has a response after its prompt and "
                         "that it fits in the context.")
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sequence_logprobs(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """log p(response | prompt) for each sequence: the sum of log p(target) over the tokens
    where ``mask`` is true. logits (B, T, V), targets (B, T), mask (B, T) -> (B,)."""
    logits, targets, mask = jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)
    _check_token_arrays(logits, targets, mask, "sequence_logprobs")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (B, T, V)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    return jnp.sum(picked * mask.astype(jnp.float32), axis=-1)  # (B,)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta: float = 0.1) -> jax.Array:
    """Direct preference optimisation (Rafailov et al., 2023), averaged over the pairs.

    Each argument is (B,): log p(answer | prompt) of the chosen or rejected answer under the
    model being trained (policy) or the frozen reference. The implicit reward of an answer is
    ``beta * (log p_policy - log p_ref)``; the loss is ``-log sigmoid(reward_chosen -
    reward_rejected)``. A larger beta keeps the policy closer to the reference.
    """
    beta = float(beta)
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a positive number (typically 0.1 to 0.5), got {beta}.")
    arrays = [jnp.asarray(a, jnp.float32) for a in (policy_chosen_logps, policy_rejected_logps,
                                                     ref_chosen_logps, ref_rejected_logps)]
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"dpo_loss takes four arrays of shape (pairs,), one log-probability "
                         f"per pair, got shapes {[tuple(a.shape) for a in arrays]}.")
    margins = preference_margins(*arrays, beta=beta)
    return -jnp.mean(jax.nn.log_sigmoid(margins))


def preference_margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                       ref_rejected_logps, beta: float = 0.1) -> jax.Array:
    """(B,) reward margins ``beta * ((pc - rc) - (pr - rr))``: positive when the policy has
    moved towards the chosen answer more than towards the rejected one."""
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    return beta * (chosen - rejected)


# ---------------------------------------------------------------- frozen weights


class Frozen(nnx.Variable):
    """A weight that is not trained: ``train.fit`` optimises ``nnx.Param``s only."""


def _modules(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """(dotted name, module) for every module inside ``model``, ``model`` itself as ''."""
    return [(".".join(map(str, path)), node) for path, node in nnx.iter_graph(model)
            if isinstance(node, nnx.Module)]


def freeze(module: nnx.Module) -> int:
    """Turn every trainable weight inside ``module`` (an ``nnx.Param`` that is not a LoRA
    adapter) into a ``Frozen`` variable, in place. Returns the number of arrays frozen."""
    n = 0
    for _, node in _modules(module):
        for name, value in list(vars(node).items()):
            if isinstance(value, nnx.Param) and not isinstance(value, nnx.LoRAParam):
                setattr(node, name, Frozen(value[...]))
                n += 1
    return n


def unfreeze(module: nnx.Module) -> int:
    """Turn every ``Frozen`` variable inside ``module`` back into an ``nnx.Param``, in place.
    Returns the number of arrays unfrozen."""
    n = 0
    for _, node in _modules(module):
        for name, value in list(vars(node).items()):
            if isinstance(value, Frozen):
                setattr(node, name, nnx.Param(value[...]))
                n += 1
    return n


# ---------------------------------------------------------------- LoRA


class LoRALinear(nnx.Module):
    """A linear layer plus a trainable low-rank change (Hu et al., 2021):

        y = base(x) + (x @ A @ B) * alpha / rank

    A (d_in, rank) starts random and B (rank, d_out) at zero, so at first the layer computes
    exactly what ``base`` does. Training changes ``rank * (d_in + d_out)`` numbers instead of
    ``d_in * d_out``. Works on inputs with any leading axes, like ``model.Linear``.
    """

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, *, rngs: nnx.Rngs):
        d_in, d_out = base.in_features, base.out_features
        self.base, self.rank, self.alpha = base, rank, float(alpha)
        init = nnx.initializers.normal(1.0 / math.sqrt(d_in))
        self.lora_a = nnx.LoRAParam(init(rngs.params(), (d_in, rank), jnp.float32))
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank, d_out), jnp.float32))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __call__(self, x: jax.Array) -> jax.Array:
        *lead, c = x.shape
        delta = (x.reshape(-1, c) @ self.lora_a[...]) @ self.lora_b[...]  # (N, d_out)
        delta = delta.reshape(*lead, delta.shape[-1]) * self.scale
        return self.base(x) + delta.astype(x.dtype)

    def merged_kernel(self) -> jax.Array:
        """The base kernel with the low-rank change folded in: W + A @ B * alpha / rank."""
        return self.base.kernel[...] + (self.lora_a[...] @ self.lora_b[...]) * self.scale


LORA_TARGETS = r"attn\.(q|v)$"  # the query and value projections, as in the LoRA paper


def add_lora(model: nnx.Module, rank: int = 8, alpha: float = 16.0,
             targets: str = LORA_TARGETS, seed: int = 0) -> nnx.Module:
    """LoRA fine-tuning in place: freeze every weight of ``model``, then wrap each linear layer
    whose dotted name matches the regular expression ``targets`` (searched, e.g.
    ``r"attn\\.(q|v)$"`` matches ``blocks.0.attn.q``) in a ``LoRALinear``. Returns the model,
    whose only trainable parameters (``model.count_params``) are now the adapters.
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive integer (typically 4 to 64), got {rank!r}.")
    if not (float(alpha) > 0 and math.isfinite(float(alpha))):
        raise ValueError(f"alpha must be a positive number (often 2 * rank), got {alpha!r}.")
    linears = [(name, node) for name, node in _modules(model) if isinstance(node, nnx.Linear)]
    chosen = [(name, node) for name, node in linears if re.search(targets, name)]
    if not chosen:
        names = ", ".join(name for name, _ in linears[:8])
        raise ValueError(f"targets={targets!r} matches none of the model's linear layers "
                         f"({names}, ...). Pass a regular expression that matches some of them.")
    for name, node in chosen:
        if node.in_features < rank or node.out_features < rank:
            raise ValueError(f"rank {rank} is larger than the layer {name} "
                             f"({node.in_features} -> {node.out_features}): a low-rank change "
                             "needs rank < min(d_in, d_out).")
    freeze(model)
    parents = dict(_modules(model))
    rngs = nnx.Rngs(seed)
    for name, node in chosen:
        parent_name, _, attr = name.rpartition(".")
        setattr(parents[parent_name], attr, LoRALinear(node, rank, alpha, rngs=rngs))
    return model


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its layer's kernel (W <- W + A @ B * alpha / rank), put the
    plain layers back and unfreeze all weights, in place: the model has its original structure
    again and computes what the adapted one did, with no extra cost per token."""
    found = [(name, node) for name, node in _modules(model) if isinstance(node, LoRALinear)]
    if not found:
        raise ValueError("The model has no LoRA adapters to merge: call add_lora first.")
    parents = dict(_modules(model))
    for name, node in found:
        base = node.base
        base.kernel = type(base.kernel)(node.merged_kernel())  # Frozen stays Frozen until below
        parent_name, _, attr = name.rpartition(".")
        setattr(parents[parent_name], attr, base)
    unfreeze(model)
    return model


def optimizer_state_bytes(model: nnx.Module, tx: optax.GradientTransformation) -> int:
    """Bytes of the optimiser state ``tx`` keeps for the model's trainable parameters (AdamW:
    two numbers per trainable weight, plus a step counter)."""
    state = tx.init(nnx.state(model, nnx.Param))
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))


# ---------------------------------------------------------------- the SFT loss from whole sequences


def response_loss(logits: jax.Array, tokens: jax.Array, response_mask: jax.Array) -> jax.Array:
    """The instruction-tuning loss from whole sequences: ``sft_loss`` after the shift by one.

    tokens (B, T + 1): prompt, response and padding, as encoded; response_mask (B, T + 1): True at
    the response's tokens (its closing end token included), aligned with ``tokens``; logits
    (B, T, V): what the model output after reading ``tokens[:, :-1]``. The logits at position t
    predict token t + 1, so the targets are ``tokens[:, 1:]`` and the mask that selects them is
    ``response_mask[:, 1:]``, shifted the same way. Returns the mean over the response tokens.
    """
    tokens, response_mask = jnp.asarray(tokens), jnp.asarray(response_mask)
    if tokens.ndim != 2 or response_mask.shape != tokens.shape:
        raise ValueError(f"response_loss: tokens and response_mask must both have shape "
                         f"(batch, seq + 1), got {tuple(tokens.shape)} and "
                         f"{tuple(response_mask.shape)}.")
    return sft_loss(logits, tokens[:, 1:], response_mask[:, 1:])


def sft_batch(data, batch_size: int, key: jax.Array):
    """``train.fit``'s batches for instruction tuning: ``batch_size`` random rows of ``data``, a
    pair (tokens (N, T + 1), loss mask (N, T + 1)) such as ``instructions.SFTArrays``. Returns
    x = tokens[:, :-1] (B, T) and y = (targets tokens[:, 1:], mask[:, 1:]), each (B, T)."""
    tokens, mask = data
    rows = jax.random.randint(key, (batch_size,), 0, tokens.shape[0])  # (B,)
    tokens, mask = tokens[rows], mask[rows]
    return tokens[:, :-1], (tokens[:, 1:], mask[:, 1:])


def sft_train_loss(model: nnx.Module, x: jax.Array, y, rngs: nnx.Rngs | None = None):
    """``train.fit``'s loss for instruction tuning: ``sft_loss`` of ``model(x)`` on the batch of
    ``sft_batch`` (y = targets and loss mask)."""
    targets, mask = y
    return sft_loss(model(x, rngs=rngs), targets, mask)


# ---------------------------------------------------------------- new tokens


def grow_vocab(model: nnx.Module, vocab_size: int, *, seed: int = 0) -> nnx.Module:
    """A copy of the GPT ``model`` with a larger vocabulary, for new tokens (special tokens of a
    chat template, characters the pretraining text lacked) appended after the old ids.

    Every weight is copied; the token table (and an untied output layer) gets new rows for ids
    ``old_vocab_size .. vocab_size - 1``, each the mean of the old rows plus a little noise
    (a tenth of their spread): a new token starts as an "average" token, so the model's
    predictions of the old tokens are unchanged at first and no new token is predicted with a
    large logit. ``model`` itself is left as it is.
    """
    from course_lib.model import GPT

    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "vocab_size"):
        raise TypeError(f"grow_vocab needs a GPT (a model with cfg.vocab_size), got "
                        f"{type(model).__name__}.")
    old = cfg.vocab_size
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < old:
        raise ValueError(f"vocab_size must be an integer >= the model's {old}, got "
                         f"{vocab_size!r}: new tokens are appended after the old ids.")
    if any(isinstance(v, (Frozen, nnx.LoRAParam)) for _, v in nnx.iter_graph(model)):
        raise ValueError("grow_vocab copies a plain model: grow the vocabulary before freezing "
                         "weights or adding LoRA adapters.")
    grown = GPT(dataclasses.replace(cfg, vocab_size=vocab_size), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)

    def copy(a, b):  # a: the old array, b: the new one (same shape except on the vocab axis)
        a = np.asarray(a)
        if a.shape == b.shape:
            return jnp.asarray(a)
        axis = next(i for i, (n, m) in enumerate(zip(a.shape, b.shape)) if n != m)
        rows = np.moveaxis(a, axis, 0)  # (old, ...)
        new = rows.mean(0) + 0.1 * rows.std(0) * rng.standard_normal(
            (vocab_size - old, *rows.shape[1:]))
        return jnp.asarray(np.moveaxis(np.concatenate([rows, new.astype(a.dtype)]), 0, axis))

    nnx.update(grown, jax.tree.map(copy, nnx.state(model, nnx.Param), nnx.state(grown, nnx.Param)))
    return grown


# ---------------------------------------------------------------- heads on the final states


class PooledHead(nnx.Module):
    """A linear head on a language model's mean-pooled final states:

        out = head(mean over the real positions of backbone.hidden_states(ids))

    With ``n_out`` classes it is a classifier (``classification_loss``); with ``n_out`` = an
    embedding width it is a text encoder for search (``info_nce_loss``). The backbone trains
    with the head (end-to-end fine-tuning) unless it is frozen (``freeze(head.backbone)``: then
    only the head learns, on frozen features).

    ``head(ids, mask)``: ids (B, T) token ids, mask (B, T) True at the real positions (False at
    right padding) -> (B, n_out).
    """

    def __init__(self, backbone: nnx.Module, n_out: int, *, rngs: nnx.Rngs):
        if not hasattr(backbone, "hidden_states"):
            raise TypeError(f"PooledHead needs a backbone with hidden_states(ids) -> (B, T, C), "
                            f"such as model.GPT; got {type(backbone).__name__}.")
        if not isinstance(n_out, int) or isinstance(n_out, bool) or n_out < 1:
            raise ValueError(f"n_out must be a positive integer, got {n_out!r}.")
        self.backbone = backbone
        self.head = nnx.Linear(backbone.cfg.d_model, n_out, rngs=rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array, *, rngs: nnx.Rngs | None = None):
        h = self.backbone.hidden_states(ids, rngs=rngs)  # (B, T, C)
        m = mask.astype(h.dtype)[..., None]  # (B, T, 1)
        pooled = (h * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)  # (B, C)
        return self.head(pooled)  # (B, n_out)


def labelled_batch(data, batch_size: int, key: jax.Array):
    """``train.fit``'s batches for a ``PooledHead`` classifier: ``data`` = (ids (N, T), mask
    (N, T), labels (N,)); returns x = (ids, mask) and y = labels for ``batch_size`` random
    rows."""
    ids, mask, labels = data
    rows = jax.random.randint(key, (batch_size,), 0, ids.shape[0])
    return (ids[rows], mask[rows]), labels[rows]


def classification_loss(model: nnx.Module, x, y: jax.Array, rngs: nnx.Rngs | None = None):
    """``train.fit``'s loss for a classifier: mean softmax cross-entropy of ``model(ids, mask)``
    (B, n_classes) against the integer labels y (B,)."""
    ids, mask = x
    logits = model(ids, mask, rngs=rngs).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ---------------------------------------------------------------- contrastive embeddings


def info_nce_loss(queries: jax.Array, keys: jax.Array, temperature: float = 0.05) -> jax.Array:
    """The InfoNCE (contrastive) loss of a batch of matching pairs (van den Oord et al., 2018).

    queries (B, C) and keys (B, C): row i of each is a matching pair (a question and the passage
    that answers it); every other key in the batch is a wrong answer for query i. The scores
    are cosine similarities divided by ``temperature``; the loss is the softmax cross-entropy
    of each query's scores (B,) with its own key as the target: the mean of
    ``-log softmax(cos(q_i, k_.) / t)[i]``. It is at least 0 and log(B) when all scores tie.
    """
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a positive number (typically 0.05 to 0.1), "
                         f"got {temperature!r}.")
    queries, keys = jnp.asarray(queries, jnp.float32), jnp.asarray(keys, jnp.float32)
    if queries.ndim != 2 or queries.shape != keys.shape:
        raise ValueError(f"info_nce_loss: queries and keys must both have shape (batch, dim), "
                         f"row i of each a matching pair; got {tuple(queries.shape)} and "
                         f"{tuple(keys.shape)}.")
    q = queries / jnp.maximum(jnp.linalg.norm(queries, axis=-1, keepdims=True), 1e-8)
    k = keys / jnp.maximum(jnp.linalg.norm(keys, axis=-1, keepdims=True), 1e-8)
    scores = q @ k.T / t  # (B, B): query i against every key
    return optax.softmax_cross_entropy_with_integer_labels(
        scores, jnp.arange(scores.shape[0])).mean()


def pair_batch(data, batch_size: int, key: jax.Array):
    """``train.fit``'s batches of matching pairs for ``InfoNCELoss``: ``data`` = (query ids,
    query mask, key ids, key mask), each (N, T); ``batch_size`` distinct random rows (so no
    pair meets its own copy as a wrong answer). Returns x = (query ids, query mask) and
    y = (key ids, key mask)."""
    q_ids, q_mask, k_ids, k_mask = data
    rows = jax.random.permutation(key, q_ids.shape[0])[:batch_size]
    return (q_ids[rows], q_mask[rows]), (k_ids[rows], k_mask[rows])


@dataclasses.dataclass(frozen=True)
class InfoNCELoss:
    """``train.fit``'s loss for a text encoder (a ``PooledHead``): ``info_nce_loss`` of the
    encoded queries and keys of a ``pair_batch``. Frozen, so two losses with the same
    temperature are equal and share compiled code."""

    temperature: float = 0.05

    def __call__(self, model: nnx.Module, x, y, rngs: nnx.Rngs | None = None):
        return info_nce_loss(model(*x, rngs=rngs), model(*y, rngs=rngs), self.temperature)


# ---------------------------------------------------------------- DPO training


def pair_logprobs(model: nnx.Module, chosen, chosen_mask, rejected, rejected_mask,
                  batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """log p(answer | prompt) of the chosen and of the rejected answer of every pair under
    ``model``, in eval mode: two (N,) arrays. Each of the four inputs is (N, T + 1): the encoded
    prompt + answer and its response mask (``instructions.PreferenceArrays``)."""
    model.eval()
    return tuple(in_batches(lambda t, m: masked_scores(model, t, m)[0], (tokens, mask), batch_size)
                 for tokens, mask in ((chosen, chosen_mask), (rejected, rejected_mask)))


@nnx.jit
def masked_scores(model, tokens, mask):
    """What the model thinks of the masked-in tokens of each row, in one forward pass.

    tokens (B, T + 1) are read as inputs ``tokens[:, :-1]`` and targets ``tokens[:, 1:]``; mask
    (B, T + 1) is True at the tokens to score (a response, a continuation; never at position 0).
    Returns (logprob, greedy), each (B,): the sum of log p(token) over the masked-in tokens, and
    whether greedy decoding writes exactly them (at every masked-in position the most likely
    next token is the one there). The model is used as it is (put it in eval mode first)."""
    logits = model(tokens[:, :-1])  # (B, T, V)
    targets, m = tokens[:, 1:], mask[:, 1:].astype(bool)
    greedy = jnp.all((jnp.argmax(logits, axis=-1) == targets) | ~m, axis=1)  # (B,)
    return sequence_logprobs(logits, targets, m), greedy


def preference_batch(data, batch_size: int, key: jax.Array):
    """``train.fit``'s batches for DPO: ``data`` = (chosen, chosen mask, rejected, rejected
    mask, reference log-prob of chosen, of rejected), the first four (N, T + 1), the last two
    (N,). Returns x = (chosen, rejected) inputs each (B, T) and y = (targets and masks of both,
    reference log-probs)."""
    rows = jax.random.randint(key, (batch_size,), 0, data[0].shape[0])
    chosen, c_mask, rejected, r_mask, ref_c, ref_r = (a[rows] for a in data)
    x = (chosen[:, :-1], rejected[:, :-1])
    y = (chosen[:, 1:], c_mask[:, 1:], rejected[:, 1:], r_mask[:, 1:], ref_c, ref_r)
    return x, y


@dataclasses.dataclass(frozen=True)
class DPOLoss:
    """``train.fit``'s loss for preference tuning: ``dpo_loss`` of the policy (the model being
    trained) on a ``preference_batch``, against the frozen reference's log-probabilities
    computed once beforehand (``pair_logprobs``). ``beta``: how strongly the policy is held to
    the reference (small beta: it may drift far)."""

    beta: float = 0.1

    def __call__(self, model: nnx.Module, x, y, rngs: nnx.Rngs | None = None):
        chosen, rejected = x
        t_c, m_c, t_r, m_r, ref_c, ref_r = y
        logits = model(jnp.concatenate([chosen, rejected]), rngs=rngs)  # (2B, T, V)
        n = chosen.shape[0]
        pol_c = sequence_logprobs(logits[:n], t_c, m_c)
        pol_r = sequence_logprobs(logits[n:], t_r, m_r)
        return dpo_loss(pol_c, pol_r, ref_c, ref_r, self.beta)
