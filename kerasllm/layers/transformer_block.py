"""Pre-norm Transformer decoder block."""

import keras

from kerasllm.layers.attention import CausalSelfAttention
from kerasllm.layers.mlp import MLP
from kerasllm.layers.normalization import make_norm
from kerasllm.layers.utils import clone_initializer


@keras.saving.register_keras_serializable(package="kerasllm")
class DecoderBlock(keras.layers.Layer):
    """`x + attn(norm(x))`, then `x + mlp(norm(x))` (GPT-2 / LLaMA pre-norm layout).

    Args:
        n_head: attention heads.
        n_kv_head: key/value heads (grouped-query when fewer than `n_head`).
        mlp_hidden: MLP hidden width.
        mlp: "gelu" or "swiglu".
        norm: "layernorm" or "rmsnorm".
        norm_eps: normalization epsilon.
        dropout: dropout on both residual branches.
        use_bias: biases in projections and LayerNorm.
        rope: rotary position embeddings in attention.
        rope_theta: RoPE base wavelength.
        kernel_initializer: initializer of input projections.
        output_initializer: initializer of the projections that write to the residual stream.
        mlp_activation: see `MLP`.
        head_dim, qkv_bias, qk_norm, rope_scaling: see `CausalSelfAttention`.

    Call arguments:
        x: `(batch, time, n_embd)`.
        cache, cache_index, attention_mask, positions, offsets, cache_slots: see `CausalSelfAttention`.

    Examples:

    >>> import numpy as np
    >>> block = DecoderBlock(n_head=2, mlp_hidden=64)
    >>> tuple(block(np.zeros((1, 4, 16), "float32")).shape)
    (1, 4, 16)
    """

    def __init__(
        self,
        n_head,
        n_kv_head=None,
        mlp_hidden=None,
        mlp="gelu",
        norm="layernorm",
        norm_eps=1e-5,
        dropout=0.0,
        use_bias=True,
        rope=False,
        rope_theta=10000.0,
        kernel_initializer="glorot_uniform",
        output_initializer="glorot_uniform",
        mlp_activation="auto",
        head_dim=None,
        qkv_bias=False,
        qk_norm=False,
        rope_scaling=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.mlp_hidden = mlp_hidden
        self.mlp_kind = mlp
        self.norm_kind = norm
        self.norm_eps = norm_eps
        self.dropout = dropout
        self.use_bias = use_bias
        self.rope = rope
        self.rope_theta = rope_theta
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer)
        self.mlp_activation = mlp_activation
        self.head_dim = head_dim
        self.qkv_bias = qkv_bias
        self.qk_norm = qk_norm
        self.rope_scaling = dict(rope_scaling) if rope_scaling else None

    def build(self, input_shape):
        n_embd = input_shape[-1]
        policy = self.dtype_policy
        self.norm_1 = make_norm(self.norm_kind, self.norm_eps, self.use_bias, name="norm_1", dtype=policy)
        self.attn = CausalSelfAttention(
            self.n_head, self.n_kv_head, dropout=self.dropout, use_bias=self.use_bias,
            rope=self.rope, rope_theta=self.rope_theta,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            output_initializer=clone_initializer(self.output_initializer), head_dim=self.head_dim,
            qkv_bias=self.qkv_bias, qk_norm=self.qk_norm, norm_eps=self.norm_eps,
            rope_scaling=self.rope_scaling, dtype=policy, name="attn",
        )
        self.norm_2 = make_norm(self.norm_kind, self.norm_eps, self.use_bias, name="norm_2", dtype=policy)
        self.mlp = MLP(
            self.mlp_hidden or 4 * n_embd, kind=self.mlp_kind, dropout=self.dropout,
            use_bias=self.use_bias, kernel_initializer=clone_initializer(self.kernel_initializer),
            output_initializer=clone_initializer(self.output_initializer), activation=self.mlp_activation,
            dtype=policy, name="mlp",
        )
        for layer in (self.norm_1, self.attn, self.norm_2, self.mlp):
            layer.build(input_shape)
        self.built = True

    def call(self, x, cache=None, cache_index=None, attention_mask=None, positions=None, training=None,
             offsets=None, cache_slots=None):
        if cache is None:
            attended = self.attn(self.norm_1(x), attention_mask=attention_mask, positions=positions, training=training)
            x = x + attended  # (B, T, C)
        else:
            attended, cache = self.attn(self.norm_1(x), cache=cache, cache_index=cache_index, offsets=offsets,
                                        attention_mask=attention_mask, positions=positions, cache_slots=cache_slots,
                                        training=training)
            x = x + attended
        x = x + self.mlp(self.norm_2(x), training=training)  # (B, T, C)
        return x if cache is None else (x, cache)

    def get_config(self):
        config = super().get_config()
        config.update(
            n_head=self.n_head,
            n_kv_head=self.n_kv_head,
            mlp_hidden=self.mlp_hidden,
            mlp=self.mlp_kind,
            norm=self.norm_kind,
            norm_eps=self.norm_eps,
            dropout=self.dropout,
            use_bias=self.use_bias,
            rope=self.rope,
            rope_theta=self.rope_theta,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            output_initializer=keras.initializers.serialize(self.output_initializer),
            mlp_activation=self.mlp_activation,
            head_dim=self.head_dim,
            qkv_bias=self.qkv_bias,
            qk_norm=self.qk_norm,
            rope_scaling=self.rope_scaling,
        )
        return config
