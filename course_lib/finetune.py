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

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

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
