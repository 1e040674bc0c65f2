"""Text generation: greedy, temperature, top-k and top-p (nucleus) sampling, with a KV cache.

``generate`` runs the whole loop as one jitted ``lax.scan``. Each step draws from its own key
(``jax.random.split(key, max_new_tokens)``), so no two steps share randomness.

With ``use_cache=True`` the keys and values of every position are kept in a fixed-size cache of
``block_size`` slots; each new token then costs one position's worth of work instead of a pass
over the whole prefix. Greedy output is identical to recomputing the prefix while the text fits
in the context. When the cache is full, the last ``block_size // 2`` tokens are fed in again
(positions restart at 0) and generation continues from there.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from course_lib.data import is_int
from course_lib.model import check_tokens


def _number(name: str, x) -> float:
    """A sampling setting as a Python float (clear TypeError for a string, a list, a bool)."""
    if isinstance(x, jax.core.Tracer):
        return x
    try:
        if isinstance(x, bool):
            raise TypeError
        return float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {x!r}.") from None


def _check_top_k(k, vocab_size: int) -> int:
    """``k`` as a Python int, or a ValueError unless it is an integer in 1..vocab_size."""
    if not is_int(k) or not 1 <= k <= vocab_size:
        raise ValueError(f"top_k must be an integer between 1 and the vocabulary size "
                         f"{vocab_size} (None = off), got {k!r}.")
    return int(k)


def _check_top_p(p) -> float:
    """``p`` as a Python float, or a ValueError unless 0 < p <= 1 (NaN fails too)."""
    p = _number("top_p", p)
    if not isinstance(p, jax.core.Tracer) and not 0 < p <= 1:
        raise ValueError(f"top_p must be a probability in (0, 1] (None = off), got {p}: the "
                         "nucleus is the most likely tokens whose probabilities add up to p.")
    return p


def _check_temperature(t, *, greedy_ok: bool = True) -> float:
    """``t`` as a Python float, or a ValueError unless it is finite and >= 0 (> 0 when a
    distribution to sample from is wanted). A traced ``t`` (inside jit) passes unchecked."""
    t = _number("temperature", t)
    if isinstance(t, jax.core.Tracer):
        return t
    if not (math.isfinite(t) and (t >= 0 if greedy_ok else t > 0)):
        low = ">= 0 (0 = greedy)" if greedy_ok else "> 0 (for greedy decoding take the argmax)"
        raise ValueError(f"temperature must be a finite number {low}, got {t}. 1 samples from "
                         "the model's own distribution; lower is sharper, higher flatter.")
    return t


def filter_top_k(logits: jax.Array, k: int) -> jax.Array:
    """Keep the ``k`` largest logits on the last axis, set the rest to -inf. (..., V) -> (..., V)"""
    k = _check_top_k(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]  # (..., 1) the k-th largest value
    return jnp.where(logits < kth, -jnp.inf, logits)


def filter_top_p(logits: jax.Array, p: float) -> jax.Array:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least ``p``
    (the nucleus); the most likely token is always kept. (..., V) -> (..., V)"""
    p = _check_top_p(p)
    order = jnp.argsort(-logits, axis=-1)  # most likely first
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
    sorted_logits = jnp.where(mass_before < p, sorted_logits, -jnp.inf)
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(sorted_logits, inverse, axis=-1)


def process_logits(logits, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> jax.Array:
    """Apply temperature (> 0), then top-k, then top-p. Returns logits to sample from."""
    logits = logits / _check_temperature(temperature, greedy_ok=False)
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    return logits


def next_token_probs(logits, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> jax.Array:
    """The distribution a sampler with these settings draws from (for plots)."""
    if _check_temperature(temperature) == 0:
        return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1])
    return jax.nn.softmax(process_logits(logits, temperature, top_k, top_p), axis=-1)


def _check_settings(vocab_size: int, max_new_tokens, temperature, top_k, top_p):
    """Every sampling setting checked; returns them as plain Python numbers (hashable, for jit)."""
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
    temperature = _check_temperature(temperature)
    top_k = None if top_k is None else _check_top_k(top_k, vocab_size)
    top_p = None if top_p is None else _check_top_p(top_p)
    return int(max_new_tokens), temperature, top_k, top_p


@partial(jax.jit, static_argnames=("graphdef", "n_new", "greedy", "top_k", "top_p", "use_cache"))
def _generate(graphdef, state, ctx, keys, temperature, *, n_new, greedy, top_k, top_p, use_cache):
    model = nnx.merge(graphdef, state)
    B, P = ctx.shape
    bs = model.cfg.block_size
    buf = jnp.concatenate([ctx, jnp.zeros((B, n_new), ctx.dtype)], axis=1)  # (B, P + N)

    def pick(logits, key):  # (B, V) -> (B,)
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(ctx.dtype)
        logits = process_logits(logits, temperature, top_k, top_p)
        return jax.random.categorical(key, logits, axis=-1).astype(ctx.dtype)

    if use_cache:
        logits, cache = model.decode(ctx, model.init_cache(B), 0)  # prefill the prompt
        half = bs // 2

        def step(carry, i):
            buf, logits, cache, pos = carry  # logits (B, V) predict token P + i
            tok = pick(logits, keys[i])
            buf = jax.lax.dynamic_update_slice(buf, tok[:, None], (0, P + i))

            def advance(cache, pos):  # feed the new token at slot pos
                lg, cache = model.decode(tok[:, None], cache, pos)
                return lg[:, -1], cache, pos + 1

            def refill(cache, pos):  # cache full: restart from the last `half` tokens
                recent = jax.lax.dynamic_slice(buf, (0, P + i + 1 - half), (B, half))
                lg, cache = model.decode(recent, model.init_cache(B), 0)
                return lg[:, -1], cache, jnp.asarray(half, pos.dtype)

            if P + n_new <= bs:  # known while tracing: the cache never fills up
                logits, cache, pos = advance(cache, pos)
            else:
                logits, cache, pos = jax.lax.cond(pos < bs, advance, refill, cache, pos)
            return (buf, logits, cache, pos), None

        carry = (buf, logits[:, -1], cache, jnp.asarray(P, jnp.int32))
        (buf, _, _, _), _ = jax.lax.scan(step, carry, jnp.arange(n_new))
        return buf

    W = min(bs, P + n_new)  # the window the model re-reads at every step

    def step(buf, i):
        length = P + i  # tokens known so far
        start = jnp.maximum(length - W, 0)
        window = jax.lax.dynamic_slice(buf, (0, start), (B, W))
        logits = model(window)  # (B, W, V); positions after `length` are ignored (causal)
        last = jax.lax.dynamic_index_in_dim(logits, length - 1 - start, axis=1, keepdims=False)
        tok = pick(last, keys[i])
        return jax.lax.dynamic_update_slice(buf, tok[:, None], (0, length)), None

    buf, _ = jax.lax.scan(step, buf, jnp.arange(n_new))
    return buf


def generate(
    model: nnx.Module,
    prompt_ids,
    max_new_tokens: int,
    *,
    key: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
) -> jax.Array:
    """Continue each prompt by ``max_new_tokens`` tokens.

    prompt_ids: int array (B, T). Returns (B, T + max_new_tokens): the prompts as given, then the
    new tokens. A prompt longer than the context is cropped to its last ``block_size`` tokens for
    the model. temperature=0 is greedy decoding. The model is put in eval mode (no dropout).
    """
    cfg = model.cfg
    prompt_ids = jnp.asarray(prompt_ids)
    if prompt_ids.ndim == 1:
        raise ValueError(
            f"prompt_ids must have shape (batch, seq), got {tuple(prompt_ids.shape)}: "
            "for one prompt pass ids[None, :]."
        )
    check_tokens(prompt_ids, cfg.vocab_size, None, what="prompt")
    if prompt_ids.shape[1] == 0:
        raise ValueError("The prompt is empty: give at least one token to start from.")
    max_new_tokens, temperature, top_k, top_p = _check_settings(
        cfg.vocab_size, max_new_tokens, temperature, top_k, top_p)
    if max_new_tokens == 0:
        return prompt_ids
    if use_cache and not hasattr(model, "init_cache"):
        raise ValueError(f"{type(model).__name__} has no key/value cache (a Transformer idea): "
                         "pass use_cache=False.")
    ctx = prompt_ids[:, -cfg.block_size:].astype(jnp.int32)
    model.eval()
    graphdef, state = nnx.split(model)
    keys = jax.random.split(key, max_new_tokens)
    out = _generate(
        graphdef, state, ctx, keys, jnp.float32(max(temperature, 1e-6)),
        n_new=max_new_tokens, greedy=temperature == 0, top_k=top_k,
        top_p=None if top_p == 1 else top_p, use_cache=use_cache,
    )
    return jnp.concatenate([prompt_ids, out[:, ctx.shape[1]:].astype(prompt_ids.dtype)], axis=1)


# ---------------------------------------------------------------- the bigram model
# The simplest language model of notebook 01: a table of next-token probabilities. These are the
# reference solutions of its exercises (checked by checks.check_normalize_bigram_counts and
# checks.check_sample_bigram).


def normalize_bigram_counts(counts, alpha: float = 1.0) -> jax.Array:
    """Bigram probabilities from counts with add-``alpha`` smoothing.

    counts: (V, V), counts[i, j] = how often token j followed token i.
    Returns P: (V, V) with P[i, j] = (counts[i, j] + alpha) / (sum_j counts[i, j] + alpha * V);
    every row sums to 1. A row with no counts at all (possible only when alpha == 0) becomes
    the uniform distribution 1/V instead of 0/0.
    """
    counts = jnp.asarray(counts, dtype=jnp.float32) + alpha  # (V, V)
    row_sums = counts.sum(axis=1, keepdims=True)  # (V, 1): keepdims so each ROW is divided
    V = counts.shape[1]
    safe = jnp.where(row_sums > 0, row_sums, 1.0)
    return jnp.where(row_sums > 0, counts / safe, 1.0 / V)  # (V, V)


@partial(jax.jit, static_argnums=2)  # n_steps fixes the output shape, so it is static
def sample_bigram(probs, start: int, n_steps: int, key: jax.Array) -> jax.Array:
    """Sample ``n_steps`` tokens from a bigram model, starting after token ``start``.

    probs: (V, V) rows are next-token distributions. key: a JAX PRNG key.
    Returns (n_steps,) int32 token ids (``start`` itself is not included).
    Each step uses its own key from ``jax.random.split``, so no randomness is reused.
    """
    logp = jnp.log(jnp.asarray(probs))  # (V, V); categorical takes log-probabilities

    def step(current, k):
        nxt = jax.random.categorical(k, logp[current])  # () one draw from row `current`
        return nxt, nxt

    keys = jax.random.split(key, n_steps)  # (n_steps,) a fresh key per step
    _, tokens = jax.lax.scan(step, jnp.int32(start), keys)
    return tokens.astype(jnp.int32)  # (n_steps,)
