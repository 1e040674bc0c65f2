"""Character-level recurrent language models, an Elman RNN and an LSTM, in Flax NNX.

They have the GPT's interface (``model(idx) -> logits (B, T, V)``, ``model.cfg.block_size``,
dropout driven by ``rngs``), so ``train.fit`` trains them unchanged and notebook 05 can compare
RNN, LSTM and Transformer on one budget.

The recurrence is written out with ``jax.lax.scan`` over time. The input half of every step,
``x_t W_x + b``, does not depend on the previous state, so it is computed for all positions in
one matrix multiply before the scan; only ``h_{t-1} W_h`` has to wait for the step before it.
That sequential dependence is what makes a recurrent network slower to train than a Transformer,
which processes all positions of a sequence at once.

Generation works with ``generate.generate(model, ..., use_cache=False)`` (the KV cache is a
Transformer idea; an RNN's "cache" would be its hidden state).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from course_lib.model import ModuleList, check_tokens

CELLS = {"rnn": 1, "lstm": 4}  # cell type -> number of gate blocks in W_x, W_h and b


@dataclass(frozen=True)
class RNNConfig:
    vocab_size: int  # number of distinct tokens
    block_size: int  # the longest input accepted (training windows have this length)
    d_model: int  # width of the embedding and of the hidden state
    n_layers: int = 1  # stacked recurrent layers; each reads the hidden states of the one below
    cell: str = "rnn"  # "rnn" (Elman, tanh) or "lstm"
    dropout: float = 0.0  # dropout on the non-recurrent connections, in training mode

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "d_model", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RNNConfig.{name} must be a positive integer, got {value!r}.")
        if self.cell not in CELLS:
            raise ValueError(f"RNNConfig.cell must be one of {sorted(CELLS)}, got {self.cell!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")


class RecurrentLayer(nnx.Module):
    """One recurrent layer. Elman RNN:  h_t = tanh(x_t W_x + h_{t-1} W_h + b).

    LSTM: z_t = x_t W_x + h_{t-1} W_h + b is split into four gate blocks i, f, g, o, and
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t).
    The forget-gate bias starts at 1, so the cell remembers by default early in training.
    """

    def __init__(self, d_in: int, d_hidden: int, cell: str, *, rngs: nnx.Rngs):
        G, H = CELLS[cell], d_hidden
        self.cell, self.d_hidden = cell, H
        self.w_x = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (d_in, G * H)))
        # Orthogonal recurrent weights keep the state's scale through many steps at the start.
        self.w_h = nnx.Param(nnx.initializers.orthogonal()(rngs.params(), (H, G * H)))
        b = jnp.zeros((G * H,))
        if cell == "lstm":
            b = b.at[H:2 * H].set(1.0)  # gate order i, f, g, o: the forget gate's block
        self.b = nnx.Param(b)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, T, d_in) -> hidden states (B, T, H); the state starts at zero."""
        B = x.shape[0]
        H = self.d_hidden
        xw = x @ self.w_x[...] + self.b[...][None, None, :]  # (B, T, G*H): every step's input part
        xw = jnp.swapaxes(xw, 0, 1)  # (T, B, G*H): scan runs over the leading axis
        w_h = self.w_h[...]  # (H, G*H)

        def rnn_step(h, xw_t):  # h (B, H), xw_t (B, H)
            h = jnp.tanh(xw_t + h @ w_h)
            return h, h

        def lstm_step(carry, xw_t):  # h, c (B, H); xw_t (B, 4H)
            h, c = carry
            i, f, g, o = jnp.split(xw_t + h @ w_h, 4, axis=-1)  # each (B, H)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        h0 = jnp.zeros((B, H), xw.dtype)
        if self.cell == "lstm":
            _, hs = jax.lax.scan(lstm_step, (h0, h0), xw)  # (T, B, H)
        else:
            _, hs = jax.lax.scan(rnn_step, h0, xw)
        return jnp.swapaxes(hs, 0, 1)  # (B, T, H)


class RecurrentLM(nnx.Module):
    """Recurrent language model: embedding -> n_layers recurrent layers -> linear output.

    ``model(idx)`` maps token ids (B, T) to next-token logits (B, T, V). Like the GPT it is
    causal by construction: the state at position t has only seen tokens 0..t.
    """

    def __init__(self, cfg: RNNConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        C = cfg.d_model
        self.embed = nnx.Embed(cfg.vocab_size, C, rngs=rngs)  # std-1 vectors, a good tanh input
        self.layers = ModuleList([RecurrentLayer(C, C, cfg.cell, rngs=rngs)
                                  for _ in range(cfg.n_layers)])
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        # Small output weights: logits start near 0, so the initial loss is close to ln V.
        self.head = nnx.Linear(C, cfg.vocab_size, rngs=rngs,
                               kernel_init=nnx.initializers.normal(0.02))

    def __call__(self, idx: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """idx: (B, T) token ids -> logits (B, T, V). rngs: keys for the dropout masks in
        training mode (defaults to the streams given at construction)."""
        check_tokens(idx, self.cfg.vocab_size, self.cfg.block_size)
        x = self.drop(self.embed(idx), rngs=rngs)  # (B, T, C)
        for layer in self.layers:
            x = self.drop(layer(x), rngs=rngs)  # (B, T, C); never inside the recurrence
        return self.head(x).astype(jnp.float32)  # (B, T, V)


def n_params_formula(cfg: RNNConfig) -> int:
    """Parameter count from the config alone (equals ``model.count_params`` of a fresh model):
    embedding V*C, per layer G * (C*C input + C*C recurrent + C bias), output C*V + V."""
    C, V, G = cfg.d_model, cfg.vocab_size, CELLS[cfg.cell]
    return V * C + cfg.n_layers * G * (2 * C * C + C) + C * V + V
