"""GPT: a decoder-only Transformer language model (GPT-2 and LLaMA-style options)."""

import math

import keras
from keras import ops
from keras_hub.layers import PositionEmbedding, ReversibleEmbedding

from kerasllm.layers import DecoderBlock, default_mlp_hidden, make_norm
from kerasllm.layers.attention import cached_positions


@keras.saving.register_keras_serializable(package="kerasllm")
class GPT(keras.Model):
    """Decoder-only Transformer: embeddings -> n_layer pre-norm blocks -> norm -> LM head.

    The defaults are GPT-2's layout (learned positions, LayerNorm, GELU MLP, tied embeddings,
    GPT-2 init: N(0, 0.02) weights and N(0, 0.02/sqrt(2 * n_layer)) for projections that
    write into the residual stream). `positions="rope"`, `norm="rmsnorm"`, `mlp="swiglu"`,
    `n_kv_head < n_head` and `bias=False` give the LLaMA layout.

    Args:
        vocab_size: number of token ids.
        block_size: longest sequence (learned position table size; generation context).
        n_layer: decoder blocks.
        n_head: attention heads.
        n_embd: residual width.
        n_kv_head: key/value heads; `None` or 0 means `n_head`.
        mlp_hidden: MLP hidden width; `None` or 0 means 4*n_embd (GELU) or ~8/3*n_embd (SwiGLU).
        mlp: "gelu" or "swiglu".
        norm: "layernorm" or "rmsnorm".
        norm_eps: epsilon of the norms.
        positions: "learned" or "rope".
        rope_theta: RoPE base wavelength.
        dropout: dropout on embeddings and residual branches.
        bias: biases in Dense and LayerNorm layers.
        tie_embeddings: the output head reuses the token embedding matrix.
        mlp_activation: "auto" (exact GELU; SiLU for SwiGLU), "gelu", "gelu_tanh" (GPT-2's),
            "silu" or "relu".
        qkv_bias: biases on the QKV projection even when `bias` is false (Qwen2).
        head_dim: width of each attention head; `None` or 0 means `n_embd // n_head`.
        qk_norm: RMSNorm on each head's queries and keys (Qwen3).
        rope_scaling: `None` or a dict: `{"type": "linear", "factor": f}` or `{"type": "llama3",
            "factor", "low_freq_factor", "high_freq_factor", "original_context"}`.
        scale_embeddings: multiply the token embeddings by `sqrt(n_embd)` before the first
            block (Gemma).

    Call arguments:
        token_ids: int tensor `(batch, time)` with `time <= block_size`, or a dict with
            `"token_ids"` and optionally `"segment_ids"` (what `fit` passes for packed rows).
        segment_ids: optional int tensor `(batch, time)` for rows that pack several
            sequences: a token attends only to earlier tokens of its own segment, and
            positions restart at 0 where each segment begins, so a packed row computes
            exactly what its sequences would compute one by one.

    Returns:
        float32 logits `(batch, time, vocab_size)`.

    Examples:

    >>> import numpy as np
    >>> model = GPT(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
    >>> tuple(model(np.zeros((3, 16), "int32")).shape)
    (3, 16, 50)
    """

    def __init__(
        self,
        vocab_size,
        block_size,
        n_layer=4,
        n_head=4,
        n_embd=128,
        n_kv_head=None,
        mlp_hidden=None,
        mlp="gelu",
        norm="layernorm",
        norm_eps=1e-5,
        positions="learned",
        rope_theta=10000.0,
        dropout=0.0,
        bias=True,
        tie_embeddings=True,
        mlp_activation="auto",
        qkv_bias=False,
        head_dim=None,
        qk_norm=False,
        rope_scaling=None,
        scale_embeddings=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if positions not in ("learned", "rope"):
            raise ValueError(f"positions must be 'learned' or 'rope', got {positions!r}")
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.n_kv_head = n_kv_head or n_head
        self.mlp_hidden = mlp_hidden or default_mlp_hidden(n_embd, mlp)
        self.mlp = mlp
        self.norm = norm
        self.norm_eps = norm_eps
        self.positions = positions
        self.rope_theta = rope_theta
        self.dropout = dropout
        self.bias = bias
        self.tie_embeddings = tie_embeddings
        self.mlp_activation = mlp_activation
        self.qkv_bias = qkv_bias
        self.head_dim = head_dim or n_embd // n_head
        self.qk_norm = qk_norm
        self.rope_scaling = dict(rope_scaling) if rope_scaling else None
        self.scale_embeddings = scale_embeddings

        def normal(stddev):
            return {"class_name": "RandomNormal", "config": {"stddev": stddev}}

        self.token_embedding = ReversibleEmbedding(
            vocab_size, n_embd, tie_weights=tie_embeddings,
            embeddings_initializer=normal(0.02), dtype=self.dtype_policy, name="token_embedding",
        )
        self.position_embedding = (
            PositionEmbedding(block_size, initializer=normal(0.02), dtype=self.dtype_policy, name="position_embedding")
            if positions == "learned"
            else None
        )
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.blocks = [
            DecoderBlock(
                n_head, self.n_kv_head, mlp_hidden=self.mlp_hidden, mlp=mlp, norm=norm,
                norm_eps=norm_eps, dropout=dropout, use_bias=bias, rope=positions == "rope",
                rope_theta=rope_theta, kernel_initializer=normal(0.02),
                output_initializer=normal(0.02 / math.sqrt(2 * n_layer)),
                mlp_activation=mlp_activation, head_dim=self.head_dim, qkv_bias=qkv_bias,
                qk_norm=qk_norm, rope_scaling=self.rope_scaling,
                dtype=self.dtype_policy, name=f"block_{i}",
            )
            for i in range(n_layer)
        ]
        self.final_norm = make_norm(norm, norm_eps, bias, name="final_norm", dtype=self.dtype_policy)

    def build(self, input_shape=(None, None)):
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        self.token_embedding.build(input_shape)
        hidden_shape = (*input_shape, self.n_embd)
        if self.position_embedding is not None:
            self.position_embedding.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.final_norm.build(hidden_shape)
        self.built = True

    def embed(self, token_ids, start_index=None, positions=None, training=None):
        """Token (plus learned position) embeddings `(batch, time, n_embd)`: the first block's input.

        Args:
            token_ids: int `(batch, time)`.
            start_index: position of `token_ids[:, 0]` (cached decoding).
            positions: optional int `(batch, time)` positions (packed rows, left-padded rows).
            training: applies the embedding dropout.
        """
        x = self.token_embedding(token_ids)  # (B, T, C)
        if self.scale_embeddings:  # Gemma; the head still uses the unscaled table
            x = x * ops.cast(math.sqrt(self.n_embd), x.dtype)
        if self.position_embedding is not None:
            if start_index is not None and positions is None:
                # Gather rather than slice: under XLA a slice at a traced offset recompiles for
                # every new offset, a gather compiles once.
                positions = ops.arange(ops.shape(token_ids)[1]) + start_index
            x = x + self.position_embedding(x, positions=positions)
        return self.embedding_dropout(x, training=training)

    def _logits(self, x):
        return ops.cast(self.token_embedding(x, reverse=True), "float32")  # (B, T, V)

    def _head(self, x):
        return self._logits(self.final_norm(x))

    def call(self, token_ids, segment_ids=None, training=None):
        return self._logits(self.features(token_ids, segment_ids, training=training))

    def features(self, token_ids, segment_ids=None, training=None):
        """Hidden states `(batch, time, n_embd)` before the LM head (after the final norm).

        Takes the same inputs as `call`; classifiers and other heads build on this.
        """
        if isinstance(token_ids, dict):
            segment_ids = token_ids.get("segment_ids", segment_ids)
            token_ids = token_ids["token_ids"]
        positions = attention_mask = None
        if segment_ids is not None:
            positions, attention_mask = segment_layout(segment_ids)
        x = self.embed(token_ids, positions=positions, training=training)  # (B, T, C)
        for block in self.blocks:
            x = block(x, attention_mask=attention_mask, positions=positions, training=training)
        return self.final_norm(x)

    # --- cached decoding -------------------------------------------------------------------
    @property
    def context_length(self):
        """The longest sequence generation can attend to: `block_size`."""
        return self.block_size

    def init_cache(self, batch_size, max_length):
        """An empty key/value cache: per layer a `(keys, values)` pair, each
        `(batch, n_kv_head, max_length, head_dim)`.

        One tensor per layer and kind (not one stacked tensor) lets XLA update the cache in
        place inside the decoding loop; re-stacking copied the whole cache every step (2.5x
        slower per decode step at batch 8, benchmarks/RESULTS.md). Heads come before slots so
        that attention reads the cache in place (`CausalSelfAttention._attend_cached`).
        """
        shape = (batch_size, self.n_kv_head, max_length, self.head_dim)
        return tuple(
            (ops.zeros(shape, dtype=self.compute_dtype), ops.zeros(shape, dtype=self.compute_dtype))
            for _ in range(self.n_layer)
        )

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask=None, offsets=None):
        """Runs `token_ids` (placed at `cache_index`) against the cache from `init_cache`.

        `padding_mask` (the common decoding interface, see `LSTMLanguageModel`) is not needed:
        attention is causal, `offsets` marks left padding, and the decoding loop rewrites a
        slot past the prompts before reading it.

        Args:
            token_ids: int `(batch, time)`.
            cache: the cache.
            cache_index: int scalar, the cache slot of `token_ids[:, 0]`.
            padding_mask: ignored.
            offsets: optional int `(batch,)`: row `b`'s sequence starts at slot `offsets[b]`
                (left-padded prompts); its token at slot `s` has position `s - offsets[b]`.

        Returns:
            `(logits, cache)`: float32 logits `(batch, time, vocab)` and the updated cache.
        """
        positions = None
        if offsets is not None:
            positions = cached_positions(ops.shape(token_ids)[1], cache_index, offsets)  # (B, T)
        x = self.embed(token_ids, start_index=cache_index, positions=positions)  # (B, T, C)
        x, cache = self._blocks_with_cache(x, cache, cache_index=cache_index, offsets=offsets)
        return self._head(x), cache

    def _blocks_with_cache(self, x, cache, **kwargs):
        """Runs `x` through every block with its layer of the cache: `(x, updated cache)`."""
        caches = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, cache=layer_cache, **kwargs)
            caches.append(layer_cache)
        return x, tuple(caches)

    def prefill_packed(self, token_ids, segment_ids, cache, rows, slots, picks):
        """Runs whole prompts, packed back to back into rows, into the cache in one pass.

        `kerasllm.generation.loop.packed_prefill` drives it: a ragged batch's prompts cost the
        passes their tokens need, not `batch x longest prompt`. Each token attends within its
        own prompt (as `call` with `segment_ids`) and its keys and values go to its own cache
        row and slot.

        Args:
            token_ids: int `(packed_rows, time)`.
            segment_ids: int `(packed_rows, time)`: equal ids mark one prompt (contiguous runs).
            cache: the cache from `init_cache`.
            rows: int `(packed_rows, time)`: the cache row of each token.
            slots: int `(packed_rows, time)`: the cache slot of each token (its position in its
                prompt counts from the prompt's first token, as with `offsets`).
            picks: int `(n, 2)`: `(packed row, column)` of the tokens whose logits are returned.

        Returns:
            `(logits, cache)`: float32 `(n, vocab)` and the updated cache.
        """
        positions, mask = segment_layout(segment_ids)
        x = self.embed(token_ids, positions=positions)  # (P, T, C)
        x, cache = self._blocks_with_cache(x, cache, attention_mask=mask, positions=positions,
                                           cache_slots=(rows, slots))
        time = ops.shape(x)[1]
        flat = ops.reshape(x, (-1, self.n_embd))  # (P * T, C)
        picked = ops.take(flat, picks[:, 0] * time + picks[:, 1], axis=0)  # (n, C)
        return self._head(picked[:, None])[:, 0], cache

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            n_kv_head=self.n_kv_head,
            mlp_hidden=self.mlp_hidden,
            mlp=self.mlp,
            norm=self.norm,
            norm_eps=self.norm_eps,
            positions=self.positions,
            rope_theta=self.rope_theta,
            dropout=self.dropout,
            bias=self.bias,
            tie_embeddings=self.tie_embeddings,
            mlp_activation=self.mlp_activation,
            qkv_bias=self.qkv_bias,
            head_dim=self.head_dim,
            qk_norm=self.qk_norm,
            rope_scaling=self.rope_scaling,
            scale_embeddings=self.scale_embeddings,
        )
        return config


def segment_layout(segment_ids):
    """Positions and attention mask for rows that pack several sequences.

    Args:
        segment_ids: int `(batch, time)`; equal ids mark one sequence (contiguous runs).

    Returns:
        `(positions, mask)`: int32 `(batch, time)` offsets from the start of each token's own
        segment, and bool `(batch, 1, time, time)`, true where a query may attend to a key
        (the key is not later and belongs to the same segment).

    Examples:

    >>> import numpy as np
    >>> positions, mask = segment_layout(np.array([[1, 1, 2, 2, 2]]))
    >>> np.asarray(positions).tolist()
    [[0, 1, 0, 1, 2]]
    >>> np.asarray(mask)[0, 0, 2].tolist()
    [False, False, True, False, False]
    """
    time = ops.shape(segment_ids)[1]
    index = ops.arange(time, dtype="int32")
    same = ops.equal(segment_ids[:, :, None], segment_ids[:, None, :])  # (B, T, T)
    first = ops.min(ops.where(same, index[None, None, :], time), axis=-1)  # (B, T)
    positions = index[None, :] - ops.cast(first, "int32")
    causal = index[:, None] >= index[None, :]  # (T, T)
    return positions, ops.logical_and(same, causal[None])[:, None]
