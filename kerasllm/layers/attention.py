"""Causal self-attention with a fused QKV projection, RoPE, grouped-query heads and a KV cache."""

import keras
from keras import ops
from kerasllm.layers.rotary import make_rotary
from kerasllm.layers.utils import clone_initializer


@keras.saving.register_keras_serializable(package="kerasllm")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head (or grouped-query) causal self-attention.

    One Dense layer computes queries, keys and values together (one matmul instead of three);
    attention runs through `keras.ops.dot_product_attention`, so each backend uses its fused
    kernel where it has one. With a cache the layer attends over previously computed keys and
    values and writes the new ones at `cache_index`: generation then costs one token per step.

    Args:
        n_head: number of query heads.
        n_kv_head: number of key/value heads; `None` or `n_head` is multi-head attention,
            fewer (dividing `n_head`) is grouped-query attention.
        dropout: dropout rate on the output projection.
        use_bias: biases in the projections.
        rope: apply rotary position embeddings to queries and keys.
        rope_theta: RoPE base wavelength.
        kernel_initializer: initializer of the QKV kernel.
        output_initializer: initializer of the output projection kernel (GPT-2 scales it by
            `1/sqrt(2 * n_layer)`).
        head_dim: width of each head; `None` means `n_embd // n_head` (Qwen3 sets it apart).
        qkv_bias: biases on the QKV projection even when `use_bias` is false (Qwen2).
        qk_norm: RMSNorm over each head's queries and keys before RoPE (Qwen3).
        norm_eps: epsilon of the q/k RMSNorm.
        rope_scaling: `None` or a dict for `kerasllm.layers.rotary.make_rotary` (linear, llama3).

    Call arguments:
        x: `(batch, time, n_embd)` float tensor.
        cache: optional `(keys, values)` pair, each `(batch, n_kv_head, max_length, head_dim)`.
        cache_index: int scalar, the cache slot of `x[:, 0]`.
        attention_mask: optional bool `(batch, 1, time, time)`: which keys each query may see,
            replacing the plain causal mask (packed rows: causal *and* same segment).
        positions: optional int `(batch, time)` RoPE positions (restarting in each segment).
        offsets: optional int `(batch,)`, with a cache: row `b`'s sequence starts at slot
            `offsets[b]` (left-padded rows); its earlier slots are never attended and its
            positions are `slot - offsets[b]`. None: every row starts at slot 0.
        cache_slots: optional `(rows, slots)`, int `(batch, time)` each, with a cache and instead
            of `cache_index`: a packed prefill. `x` holds whole prompts packed into rows (laid
            out by `attention_mask` and `positions`); attention stays within them, and the key
            and value of `x[b, t]` are written to the cache's row `rows[b, t]` at slot
            `slots[b, t]` (nothing is read from the cache).

    Returns:
        `y` of the shape of `x`, or `(y, updated_cache)` when a cache is given.

    Examples:

    >>> import numpy as np
    >>> layer = CausalSelfAttention(n_head=4, n_kv_head=2)
    >>> tuple(layer(np.zeros((2, 5, 32), "float32")).shape)
    (2, 5, 32)
    """

    def __init__(
        self,
        n_head,
        n_kv_head=None,
        dropout=0.0,
        use_bias=True,
        rope=False,
        rope_theta=10000.0,
        kernel_initializer="glorot_uniform",
        output_initializer="glorot_uniform",
        head_dim=None,
        qkv_bias=False,
        qk_norm=False,
        norm_eps=1e-6,
        rope_scaling=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        if n_head % self.n_kv_head:
            raise ValueError(f"n_head={n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        self.dropout = dropout
        self.use_bias = use_bias
        self.rope = rope
        self.rope_theta = rope_theta
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer)
        self.head_dim = head_dim
        self.qkv_bias = qkv_bias
        self.qk_norm = qk_norm
        self.norm_eps = norm_eps
        self.rope_scaling = dict(rope_scaling) if rope_scaling else None

    def build(self, input_shape):
        n_embd = input_shape[-1]
        if not self.head_dim:
            if n_embd % self.n_head:
                raise ValueError(f"n_embd={n_embd} must be divisible by n_head={self.n_head}")
            self.head_dim = n_embd // self.n_head
        self.qkv = keras.layers.Dense(
            (self.n_head + 2 * self.n_kv_head) * self.head_dim,
            use_bias=self.use_bias or self.qkv_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(input_shape)
        self.proj = keras.layers.Dense(
            n_embd,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.output_initializer),
            dtype=self.dtype_policy,
            name="proj",
        )
        self.proj.build((*input_shape[:-1], self.n_head * self.head_dim))
        self.rotary = (
            make_rotary(self.rope_theta, self.rope_scaling, dtype=self.dtype_policy) if self.rope else None
        )
        self.q_norm = self.k_norm = None
        if self.qk_norm:
            head_shape = (*input_shape[:-1], self.n_head, self.head_dim)
            self.q_norm = keras.layers.RMSNormalization(epsilon=self.norm_eps, dtype=self.dtype_policy, name="q_norm")
            self.k_norm = keras.layers.RMSNormalization(epsilon=self.norm_eps, dtype=self.dtype_policy, name="k_norm")
            self.q_norm.build(head_shape)
            self.k_norm.build(head_shape)
        self.out_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    def call(self, x, cache=None, cache_index=None, attention_mask=None, positions=None, training=None,
             offsets=None, cache_slots=None):
        batch, time = ops.shape(x)[0], ops.shape(x)[1]
        H, D = self.n_head, self.head_dim
        start = 0 if cache_index is None else cache_index
        if cache is not None and offsets is not None:
            positions = cached_positions(time, start, offsets)
        q, k, v = self.project_qkv(x, start_index=start, positions=positions)

        if attention_mask is not None and (cache is None or cache_slots is not None):
            y = ops.dot_product_attention(q, self._repeat_kv(k), self._repeat_kv(v), mask=attention_mask)
            if cache_slots is not None:  # a packed prefill writes what it computed, reads nothing
                cache = (scatter_slots(cache[0], k, *cache_slots), scatter_slots(cache[1], v, *cache_slots))
        elif cache is None:
            y = ops.dot_product_attention(q, self._repeat_kv(k), self._repeat_kv(v), is_causal=True)
        else:
            y, cache = self._attend_cached(q, k, v, cache, start, offsets)
        y = ops.reshape(y, (batch, time, H * D))  # (B, T, C)
        y = self.out_dropout(self.proj(y), training=training)
        return y if cache is None else (y, cache)

    def _attend_cached(self, q, k, v, cache, start, offsets):
        """Writes `k`, `v` into the cache at slot `start` and attends over it: `(y, cache)`.

        The cache is head-major, `(B, K, S, D)`: both products then read it in place (for one
        new token, matrix-vector products per row and head). With slots before heads XLA copied
        every layer's whole cache into its dot's layout at each decoding step, a cost growing
        with rows x buffer length (benchmarks/RESULTS.md). Grouped-query heads group the
        queries rather than repeating the cache.
        """
        batch, time = ops.shape(q)[0], ops.shape(q)[1]
        H, K, D = self.n_head, self.n_kv_head, self.head_dim
        # The reshape keeps the cache's static shape through an unXLA'd graph's update (the
        # SavedModel's loop needs the same shape in every iteration).
        keys = ops.reshape(ops.slice_update(cache[0], (0, 0, start, 0), ops.transpose(k, (0, 2, 1, 3))),
                           ops.shape(cache[0]))  # (B, K, S, D)
        values = ops.reshape(ops.slice_update(cache[1], (0, 0, start, 0), ops.transpose(v, (0, 2, 1, 3))),
                             ops.shape(cache[1]))  # (B, K, S, D)
        q = ops.transpose(ops.reshape(q, (batch, time, K, H // K, D)), (0, 2, 3, 1, 4))  # (B, K, G, T, D)
        scores = ops.einsum("bkgtd,bksd->bkgts", q, keys)  # (B, K, G, T, S)
        scores = ops.cast(scores, "float32") * (1.0 / D**0.5)
        # Query slot start + t sees key slots up to its own, from its row's first slot on.
        length = ops.shape(keys)[2]
        query_slot = (ops.arange(time) + start)[:, None]  # (T, 1)
        key_slot = ops.arange(length)[None, :]  # (1, S)
        visible = (key_slot <= query_slot)[None]  # (1, T, S)
        if offsets is not None:  # a padding slot sees itself only (no empty softmax)
            first = ops.reshape(ops.cast(offsets, "int32"), (-1, 1, 1))
            visible = visible & ((key_slot[None] >= first) | (key_slot == query_slot)[None])  # (B, T, S)
        scores = ops.where(visible[:, None, None], scores, -1e9)
        probs = ops.cast(ops.softmax(scores, axis=-1), values.dtype)
        y = ops.einsum("bkgts,bksd->bkgtd", probs, values)  # (B, K, G, T, D)
        y = ops.reshape(ops.transpose(y, (0, 3, 1, 2, 4)), (batch, time, H * D))
        return y, (keys, values)

    def project_qkv(self, x, start_index=0, positions=None):
        """Queries, keys and values of `x`, with q/k norms and rotary embeddings applied when the layer has them.

        Args:
            x: `(batch, time, n_embd)` float tensor.
            start_index: position of `x[:, 0]` (RoPE only).
            positions: optional int `(batch, time)` RoPE positions.

        Returns:
            `(q, k, v)`: `q` is `(batch, time, n_head, head_dim)`, `k` and `v` are
            `(batch, time, n_kv_head, head_dim)` (not yet repeated for grouped-query heads).
        """
        batch, time = ops.shape(x)[0], ops.shape(x)[1]
        H, K, D = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x)  # (B, T, (H + 2K) * D)
        q = ops.reshape(qkv[..., : H * D], (batch, time, H, D))  # (B, T, H, D)
        k = ops.reshape(qkv[..., H * D : (H + K) * D], (batch, time, K, D))  # (B, T, K, D)
        v = ops.reshape(qkv[..., (H + K) * D :], (batch, time, K, D))  # (B, T, K, D)
        if self.q_norm is not None:  # Qwen3: RMSNorm per head, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q = self.rotary(q, start_index=start_index, positions=positions)
            k = self.rotary(k, start_index=start_index, positions=positions)
        return q, k, v

    def attention_probabilities(self, x, attention_mask=None, positions=None):
        """The attention probabilities `call` uses, which the fused kernel never materializes.

        `softmax(q k^T / sqrt(head_dim))` under the causal mask (or `attention_mask`), computed
        in float32 from the same projection as `call`.

        Args:
            x: `(batch, time, n_embd)` float tensor (the block's normalized input).
            attention_mask: optional bool `(batch, 1, time, time)`, as in `call`.
            positions: optional int `(batch, time)` RoPE positions, as in `call`.

        Returns:
            float32 `(batch, n_head, time, time)`; each row sums to 1 over the visible keys.

        Examples:

        >>> import numpy as np
        >>> layer = CausalSelfAttention(n_head=4, n_kv_head=2, rope=True)
        >>> probs = ops.convert_to_numpy(layer.attention_probabilities(np.ones((1, 3, 16), "float32")))
        >>> probs.shape, probs[0, 0, 0].round(3).tolist()
        ((1, 4, 3, 3), [1.0, 0.0, 0.0])
        """
        if not self.built:
            self.build(tuple(ops.shape(x)))
        q, k, _ = self.project_qkv(x, positions=positions)
        time = ops.shape(x)[1]
        scores = ops.einsum("bqhd,bkhd->bhqk", q, self._repeat_kv(k)) / (self.head_dim ** 0.5)  # (B, H, T, T)
        if attention_mask is None:
            attention_mask = ops.tril(ops.ones((time, time), "bool"))[None, None]
        scores = ops.where(attention_mask, ops.cast(scores, "float32"), -1e9)
        return ops.softmax(scores, axis=-1)

    def _repeat_kv(self, t):
        groups = self.n_head // self.n_kv_head
        return t if groups == 1 else ops.repeat(t, groups, axis=2)

    def get_config(self):
        config = super().get_config()
        config.update(
            n_head=self.n_head,
            n_kv_head=self.n_kv_head,
            dropout=self.dropout,
            use_bias=self.use_bias,
            rope=self.rope,
            rope_theta=self.rope_theta,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            output_initializer=keras.initializers.serialize(self.output_initializer),
            head_dim=self.head_dim,
            qkv_bias=self.qkv_bias,
            qk_norm=self.qk_norm,
            norm_eps=self.norm_eps,
            rope_scaling=self.rope_scaling,
        )
        return config


def scatter_slots(cache, x, rows, slots):
    """`cache` `(B, K, S, D)` with `x[b, t]` `(K, D)` written to row `rows[b, t]`, slot `slots[b, t]`."""
    batch, time, heads = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
    shape = (batch, time, heads)
    index = ops.stack([ops.broadcast_to(ops.cast(rows, "int32")[:, :, None], shape),
                       ops.broadcast_to(ops.arange(heads, dtype="int32")[None, None, :], shape),
                       ops.broadcast_to(ops.cast(slots, "int32")[:, :, None], shape)], axis=-1)  # (B, T, K, 3)
    updates = ops.reshape(ops.cast(x, cache.dtype), (-1, ops.shape(x)[3]))  # (B * T * K, D)
    return ops.scatter_update(cache, ops.reshape(index, (-1, 3)), updates)


def cached_positions(time, start, offsets):
    """Positions `(batch, time)` of tokens at cache slots `start ...` in left-padded rows.

    Row `b` begins at slot `offsets[b]`; padding slots before it get position 0 (they are
    never attended, and a gather must not see a negative index).
    """
    slots = ops.arange(time, dtype="int32")[None, :] + ops.cast(start, "int32")  # (1, T)
    return ops.maximum(slots - ops.reshape(ops.cast(offsets, "int32"), (-1, 1)), 0)
