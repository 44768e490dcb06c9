"""The LSTM language-model baseline."""

import keras
from keras import ops
from keras_hub.layers import ReversibleEmbedding


@keras.saving.register_keras_serializable(package="kerasllm")
class LSTMLanguageModel(keras.Model):
    """Embedding -> stacked LSTM -> LM head, the classic recurrent baseline.

    Args:
        vocab_size: number of token ids.
        block_size: training window length (the LSTM itself has no length limit).
        n_layer: stacked LSTM layers.
        n_embd: embedding width.
        hidden_size: LSTM units; `None` or 0 means `n_embd`.
        dropout: dropout on the embedding and after each LSTM layer.
        tie_embeddings: the head reuses the embedding matrix (with a projection from
            `hidden_size` to `n_embd` when they differ).

    Call arguments:
        token_ids: int tensor `(batch, time)`.

    Returns:
        float32 logits `(batch, time, vocab_size)`.

    Examples:

    >>> import numpy as np
    >>> model = LSTMLanguageModel(vocab_size=50, block_size=16, n_layer=2, n_embd=32)
    >>> tuple(model(np.zeros((3, 16), "int32")).shape)
    (3, 16, 50)
    """

    def __init__(
        self,
        vocab_size,
        block_size,
        n_layer=2,
        n_embd=128,
        hidden_size=None,
        dropout=0.0,
        tie_embeddings=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.n_layer = n_layer
        self.n_embd = n_embd
        self.hidden_size = hidden_size or n_embd
        self.dropout = dropout
        self.tie_embeddings = tie_embeddings
        self.token_embedding = ReversibleEmbedding(
            vocab_size, n_embd, tie_weights=True, dtype=self.dtype_policy, name="token_embedding"
        )
        # The head (the embedding in reverse) may get the LSTMs' padding mask (a prefill with
        # `padding_mask`); it has no use for it, and accepting it silences Keras' warning.
        self.token_embedding.supports_masking = True
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.lstms = [
            keras.layers.LSTM(
                self.hidden_size, return_sequences=True, return_state=True,
                dtype=self.dtype_policy, name=f"lstm_{i}",
            )
            for i in range(n_layer)
        ]
        self.dropouts = [keras.layers.Dropout(dropout, dtype=self.dtype_policy) for _ in range(n_layer)]
        if tie_embeddings:
            self.head = None
            self.projection = (
                keras.layers.Dense(n_embd, dtype=self.dtype_policy, name="projection")
                if self.hidden_size != n_embd
                else None
            )
        else:
            self.projection = None
            self.head = keras.layers.Dense(vocab_size, dtype=self.dtype_policy, name="head")

    def build(self, input_shape=(None, None)):
        self.token_embedding.build(input_shape)
        width = self.n_embd
        for lstm in self.lstms:
            lstm.build((*input_shape, width))
            width = self.hidden_size
        hidden_shape = (*input_shape, self.hidden_size)
        if self.projection is not None:
            self.projection.build(hidden_shape)
        if self.head is not None:
            self.head.build(hidden_shape)
        self.built = True

    def _run(self, token_ids, states=None, mask=None, training=None):
        x = self.embedding_dropout(self.token_embedding(token_ids), training=training)  # (B, T, E)
        new_states = []
        for i, (lstm, dropout) in enumerate(zip(self.lstms, self.dropouts)):
            initial = None if states is None else [states[:, i, 0], states[:, i, 1]]
            x, h, c = lstm(x, initial_state=initial, mask=mask, training=training)  # (B, T, H)
            x = dropout(x, training=training)
            new_states.append(ops.stack([h, c], axis=1))
        if self.head is not None:
            logits = self.head(x)
        else:
            if self.projection is not None:
                x = self.projection(x)
            logits = self.token_embedding(x, reverse=True)
        return ops.cast(logits, "float32"), ops.stack(new_states, axis=1)  # (B, T, V), (B, L, 2, H)

    def call(self, token_ids, training=None):
        return self._run(token_ids, training=training)[0]

    # --- cached decoding (the interface of keras-hub's CausalLMs and of `GPT`) -------------
    @property
    def context_length(self):
        """None: a recurrent model has no context limit (`block_size` is its training window)."""
        return None

    def init_cache(self, batch_size, max_length=None):
        """Zero recurrent state `(batch, n_layer, 2, hidden_size)` (h and c per layer).

        `max_length` is accepted for the common interface; a state does not grow with it.
        """
        return ops.zeros((batch_size, self.n_layer, 2, self.hidden_size), dtype=self.compute_dtype)

    def call_with_cache(self, token_ids, cache, cache_index=None, padding_mask=None, offsets=None):
        """Runs `token_ids` from the state `cache`; returns `(logits, new_state)`.

        Args:
            token_ids: int `(batch, time)`.
            cache: the state from `init_cache` or a previous call.
            cache_index: ignored (the state does not depend on where the tokens are).
            padding_mask: optional bool `(batch, time)`; the state is kept unchanged over the
                `False` positions (padding on either side), so it ends at each row's last real
                token.
            offsets: ignored (left padding reaches the state only through `padding_mask`).
        """
        return self._run(token_ids, states=cache, mask=padding_mask)

    # The names of the first version, kept for callers of the public methods.
    def init_state(self, batch_size):
        """Same as `init_cache(batch_size)`."""
        return self.init_cache(batch_size)

    def call_with_state(self, token_ids, states):
        """Same as `call_with_cache(token_ids, states)`."""
        return self.call_with_cache(token_ids, states)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            hidden_size=self.hidden_size,
            dropout=self.dropout,
            tie_embeddings=self.tie_embeddings,
        )
        return config
