"""Position-wise feed-forward networks: GELU (GPT-2) and SwiGLU (LLaMA)."""

import keras
from keras import ops
from kerasllm.layers.utils import clone_initializer


ACTIVATIONS = ("auto", "gelu", "gelu_tanh", "silu", "relu")


def default_mlp_hidden(n_embd, kind):
    """Hidden width when `model.mlp_hidden = 0`: 4x for GELU; 2/3 of 4x rounded up to 64 for SwiGLU."""
    if kind == "swiglu":
        return 64 * -(-int(8 * n_embd / 3) // 64)
    return 4 * n_embd


@keras.saving.register_keras_serializable(package="kerasllm")
class MLP(keras.layers.Layer):
    """`Dense(hidden) -> activation -> Dense(n_embd) -> dropout`.

    With `kind="swiglu"` the first Dense is fused: it computes gate and up projections in one
    matmul and the activation is `silu(gate) * up`.

    `activation` picks the nonlinearity: "auto" (exact GELU, or SiLU for SwiGLU), "gelu",
    "gelu_tanh" (the tanh approximation: GPT-2's "gelu_new"), "silu" or "relu".

    Args:
        hidden: hidden width.
        kind: "gelu" or "swiglu".
        dropout: dropout rate on the output.
        use_bias: biases in both Dense layers.
        kernel_initializer: initializer of the input kernel.
        output_initializer: initializer of the output kernel.
        activation: see above.

    Examples:

    >>> import numpy as np
    >>> tuple(MLP(hidden=64, kind="swiglu")(np.zeros((2, 3, 16), "float32")).shape)
    (2, 3, 16)
    """

    def __init__(
        self,
        hidden,
        kind="gelu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        output_initializer="glorot_uniform",
        activation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kind not in ("gelu", "swiglu"):
            raise ValueError(f"MLP kind must be 'gelu' or 'swiglu', got {kind!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.hidden = hidden
        self.kind = kind
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer)

    def build(self, input_shape):
        n_embd = input_shape[-1]
        width = 2 * self.hidden if self.kind == "swiglu" else self.hidden
        self.fc = keras.layers.Dense(
            width, use_bias=self.use_bias, kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy, name="fc",
        )
        self.fc.build(input_shape)
        self.proj = keras.layers.Dense(
            n_embd, use_bias=self.use_bias, kernel_initializer=clone_initializer(self.output_initializer),
            dtype=self.dtype_policy, name="proj",
        )
        self.proj.build((*input_shape[:-1], self.hidden))
        self.out_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    def call(self, x, training=None):
        h = self.fc(x)  # (B, T, hidden) or (B, T, 2 * hidden)
        if self.kind == "swiglu":
            gate, up = h[..., : self.hidden], h[..., self.hidden :]
            h = self._activate(gate) * up
        else:
            h = self._activate(h)
        return self.out_dropout(self.proj(h), training=training)  # (B, T, C)

    def _activate(self, h):
        name = self.activation
        if name == "auto":
            name = "silu" if self.kind == "swiglu" else "gelu"
        if name == "gelu":
            # Exact GELU through erf, as JAX computes it: TensorFlow's erfc form took 3x as long under XLA (benchmarks/RESULTS.md).
            return 0.5 * h * (1.0 + ops.erf(h * ops.cast(0.7071067811865476, h.dtype)))
        if name == "gelu_tanh":
            return ops.gelu(h, approximate=True)
        return ops.silu(h) if name == "silu" else ops.relu(h)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden=self.hidden,
            kind=self.kind,
            dropout=self.dropout,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            output_initializer=keras.initializers.serialize(self.output_initializer),
            activation=self.activation,
        )
        return config
