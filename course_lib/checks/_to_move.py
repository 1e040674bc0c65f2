"""Reference solutions waiting for their concept module.

Each function below is the reference of one exercise; the comment above it names the module it
belongs in. Moving one is: cut it (with its imports) into that module, then import it from
there in the check module named in the same comment.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

# ---------------------------------------------------------------- notebook 04: the Transformer


# ---------------------------------------------------------------- notebook 05: training


# -> course_lib.train, beside loss_fn: next_token_loss(logits, tokens) is
#    loss_fn(logits, tokens[:, 1:]) (used by checks/training.py)
def next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of a window of text.

    logits: (B, T, V), what the model output after reading tokens[:, :-1].
    tokens: (B, T + 1) int. The logits at position t predict token t + 1, so the targets are
    tokens[:, 1:]. Returns a scalar: the mean over all B * T positions of -log p(target).
    """
    targets = tokens[:, 1:]  # (B, T): shifted by one
    logp = jax.nn.log_softmax(logits, axis=-1)  # (B, T, V)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    return -picked.mean()


# -> course_lib.train, beside lr_schedule (the same numbers) (used by checks/training.py)
def lr_at(step: int, *, peak_lr: float, min_lr: float, warmup_steps: int,
          total_steps: int) -> float:
    """Linear warmup from 0 (at step 0) to ``peak_lr`` (at ``warmup_steps``), then a half
    cosine from ``peak_lr`` down to ``min_lr`` at ``total_steps``, then ``min_lr``.
    The same numbers as ``train.lr_schedule`` (optax.warmup_cosine_decay_schedule)."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1 over the decay
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


# -> course_lib.train (used by checks/training.py)
def clip_by_global_norm(grads, max_norm: float):
    """Scale every gradient by min(1, max_norm / global_norm), where global_norm is the
    norm of all gradients together, sqrt(sum of squares of every entry of every array).
    Same result as ``optax.clip_by_global_norm(max_norm)``. Returns a pytree like ``grads``."""
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))  # () global norm
    scale = jnp.minimum(1.0, max_norm / norm)  # () only ever shrinks
    return jax.tree.map(lambda g: g * scale, grads)


# -> course_lib.train as the public train.train_step; checks/training.py uses train.train_step
#    as soon as it exists, this copy until then.
def train_step(params, opt_state, x, y, *, loss_of: Callable,
               tx: optax.GradientTransformation):
    """One optimiser step. loss_of(params, x, y) -> scalar loss; tx: an optax transformation.

    Returns (new_params, new_opt_state, loss), where loss is the loss of the params passed in.
    Jit it with ``jax.jit(partial(train_step, loss_of=..., tx=...))``.
    """
    loss, grads = jax.value_and_grad(loss_of)(params, x, y)  # grads: same tree as params
    updates, opt_state = tx.update(grads, opt_state, params)  # params: for weight decay
    params = optax.apply_updates(params, updates)  # params + updates (updates point downhill)
    return params, opt_state, loss


# ---------------------------------------------------------------- notebook 07: scaling
