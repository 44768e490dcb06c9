"""A language model as a `tf.Module` with text-in/text-out serving signatures."""

import tensorflow as tf

from kerasllm.errors import ConfigError
from kerasllm.export.graph import (
    check_ids,
    encode,
    model_variables,
    tokenizer_resources,
    traced_portably,
)
from kerasllm.generation import loop
from kerasllm.generation.generator import DECODING_INTERFACE

GENERATE_SIGNATURE = [
    tf.TensorSpec([None], tf.string, name="prompt"),
    tf.TensorSpec([], tf.int32, name="max_new_tokens"),
    tf.TensorSpec([], tf.float32, name="temperature"),
    tf.TensorSpec([], tf.int32, name="top_k"),
    tf.TensorSpec([], tf.float32, name="top_p"),
    tf.TensorSpec([], tf.int32, name="seed"),
]
SCORE_SIGNATURE = [tf.TensorSpec([None], tf.string, name="text")]
LOGITS_SIGNATURE = [tf.TensorSpec([None, None], tf.int32, name="token_ids")]


class _Untracked:
    """Holds the Keras objects out of the module's object graph (a tuple or list would be tracked)."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer


class LanguageModelServer(tf.Module):
    """A `GPT` or `LSTMLanguageModel` plus its tokenizer, ready for `tf.saved_model.save`.

    Everything runs in the graph (tokenization, the KV-cached decoding loop, sampling,
    detokenization), so the saved model needs only TensorFlow (and tensorflow-text when the
    tokenizer uses its ops). The module owns the model's weights as `tf.Variable`s and the
    tokenizer's tables.

    Signatures (`signatures()`; `serving_default` is `generate`):

    * `generate(prompt, max_new_tokens, temperature, top_k, top_p, seed)` ->
      `text` (string `[batch]`, the continuation only), `token_ids` (int32
      `[batch, new_tokens]`), `prompt_tokens` (int32 `[batch]`, prompt tokens used).
      Decoding is `Generator.generate`'s loop and sampler (greedy when temperature is 0), so
      the same prompt and settings give the same tokens; row `i` of a batch samples with seed
      `seed + i`, as `Generator.generate(..., seed=seed)` does. An empty batch gives an empty one.
      A GPT's prompt and continuation must fit its context: `max_new_tokens` is capped at
      `min(max_new_tokens cap, block_size - 1)` and prompts keep their last
      `block_size - max_new_tokens` tokens (`truncate="left"`) or fail (`truncate="error"`).
      An empty prompt starts from `<eos>` (the document boundary).
    * `score(text)` -> `log_likelihood` (float32 `[batch]`, natural log), `token_count`
      (int32 `[batch]`), `perplexity` (float32 `[batch]`). Each text is scored as a document:
      every token is predicted from the ones before it, starting after an `<eos>`, with the
      evaluate recipe's sliding window (`block_size` tokens, step `score_stride`). An empty
      text has 0 tokens, log-likelihood 0 and perplexity 1.
    * `next_token_logits(token_ids)` -> `logits` (float32 `[batch, vocab]`) at the last position.

    Args:
        model: a built `GPT` or `LSTMLanguageModel`.
        tokenizer: the run's `kerasllm.tokenizers.Tokenizer`.
        max_new_tokens: the largest `max_new_tokens` a request gets (larger ones are capped).
        truncate: "left" drops the oldest prompt tokens that do not fit the context; "error"
            rejects such requests with an InvalidArgument error.
        score_stride: step of `score`'s sliding window; 0 means `block_size // 2`.

    Examples:

    >>> import tensorflow as tf
    >>> from kerasllm.models import GPT
    >>> from kerasllm.tokenizers import CharTokenizer
    >>> tokenizer = CharTokenizer.train(["hello world"])
    >>> model = GPT(vocab_size=tokenizer.vocabulary_size, block_size=16, n_layer=1,
    ...             n_head=2, n_embd=16)
    >>> server = LanguageModelServer(model, tokenizer, max_new_tokens=8)
    >>> out = server.generate(tf.constant(["hel", ""]), 5, 0.0, 0, 1.0, 0)
    >>> out["token_ids"].shape
    TensorShape([2, 5])
    >>> server.score(tf.constant(["hello"]))["token_count"].numpy()
    array([5], dtype=int32)
    """

    def __init__(self, model, tokenizer, max_new_tokens=256, truncate="left", score_stride=0, name="language_model"):
        super().__init__(name=name)
        if not all(hasattr(model, name) for name in DECODING_INTERFACE):
            raise ConfigError(f"a language model export needs a GPT or LSTMLanguageModel, got {type(model).__name__}")
        if truncate not in ("left", "error"):
            raise ConfigError(f"export.truncate = {truncate!r}: expected 'left' or 'error'")
        if max_new_tokens < 1:
            raise ConfigError(f"export.max_new_tokens = {max_new_tokens}: expected a positive integer")
        if model.vocab_size != tokenizer.vocabulary_size:
            raise ConfigError(
                f"the model has {model.vocab_size} token ids but the tokenizer {tokenizer.vocabulary_size}"
            )
        if not model.built:
            model.build((None, None))
        self.context = model.context_length  # None: no limit
        self.block_size = int(model.block_size)
        self.vocab_size = int(model.vocab_size)
        self.truncate = truncate
        self.max_new_tokens = max_new_tokens if self.context is None else min(max_new_tokens, self.context - 1)
        if self.max_new_tokens < 1:
            raise ConfigError(f"model.block_size = {self.block_size} leaves no room to generate")
        self.score_stride = min(score_stride or max(self.block_size // 2, 1), self.block_size)
        if score_stride < 0:
            raise ConfigError(f"export.score_stride = {score_stride}: expected 0 (block_size // 2) or more")
        self.pad_id, self.eos_id = int(tokenizer.pad_id), int(tokenizer.eos_id)
        self.tokenizer_kind = tokenizer.kind
        self.model_class = type(model).__name__
        # Owned (tracked) state; the Keras model and tokenizer objects themselves are only
        # referenced by the traced functions, so the SavedModel holds no Keras objects.
        self.weights = model_variables(model)
        self.tokenizer_tables = tokenizer_resources(tokenizer)
        self._keras = _Untracked(model, tokenizer)

        self.generate = tf.function(traced_portably(self._generate), input_signature=GENERATE_SIGNATURE)
        self.score = tf.function(traced_portably(self._score), input_signature=SCORE_SIGNATURE)
        self.next_token_logits = tf.function(
            traced_portably(self._next_token_logits), input_signature=LOGITS_SIGNATURE
        )

    def signatures(self):
        """The SavedModel signatures, `serving_default` first."""
        return {
            "serving_default": self.generate,
            "generate": self.generate,
            "score": self.score,
            "next_token_logits": self.next_token_logits,
        }

    def describe(self):
        """Facts for the export's README."""
        cap = str(self.max_new_tokens) if self.context is None else f"min({self.max_new_tokens}, block_size - 1)"
        prompts = (
            f"prompts longer than {self.block_size} - max_new_tokens tokens are "
            + ("left-truncated" if self.truncate == "left" else "rejected (InvalidArgument)")
            if self.context is not None
            else "prompts of any length (the LSTM has no context limit)"
        )
        return [
            f"model: {self.model_class}, {self.vocab_size} token ids, context {self.block_size}",
            f"tokenizer: {self.tokenizer_kind} (runs in the graph)",
            f"generate: max_new_tokens is capped at {cap}; {prompts}; text is the continuation only",
            "score: natural-log likelihood of each text's tokens after an <eos>, sliding window of "
            f"{self.block_size} tokens with step {self.score_stride}; "
            "perplexity = exp(-log_likelihood / token_count)",
        ]

    # --- signatures ----------------------------------------------------------------------
    def _generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed):
        model, tokenizer = self._keras.model, self._keras.tokenizer
        checks = [
            tf.debugging.assert_non_negative(max_new_tokens, message="generate: max_new_tokens must be >= 0"),
            tf.debugging.assert_non_negative(temperature, message="generate: temperature must be >= 0 and finite"),
            tf.debugging.assert_equal(tf.math.is_finite(temperature), True,
                                      message="generate: temperature must be >= 0 and finite"),
            tf.debugging.assert_non_negative(top_k, message="generate: top_k must be >= 0 (0: off)"),
            tf.debugging.assert_positive(top_p, message="generate: top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(top_p, 1.0, message="generate: top_p must be in (0, 1]"),
        ]
        with tf.control_dependencies(checks):
            new = tf.minimum(max_new_tokens, self.max_new_tokens)
        ids = encode(tokenizer, prompt)
        if self.context is not None:
            limit = self.context - new
            if self.truncate == "error":
                longest = tf.cast(tf.reduce_max(tf.concat([ids.row_lengths(), [0]], 0)), tf.int32)
                check = tf.debugging.assert_less_equal(
                    longest, limit,
                    message=f"generate: prompt too long; prompt tokens + max_new_tokens must be <= "
                    f"block_size = {self.block_size} (export.truncate = 'error')",
                )
                with tf.control_dependencies([check]):
                    ids = tf.identity(ids)
            ids = ids[:, -limit:]
        prompt_tokens = tf.cast(ids.row_lengths(), tf.int32)
        batch = tf.shape(prompt_tokens)[0]
        # Empty prompts start from <eos>, the document boundary, as Generator does.
        lengths = tf.maximum(prompt_tokens, 1)
        total = tf.reduce_max(tf.concat([lengths, [1]], 0)) + new
        buffer = ids.to_tensor(default_value=self.pad_id, shape=[batch, total])
        positions = tf.range(total)[None, :]
        buffer = tf.where((prompt_tokens[:, None] == 0) & (positions == 0), self.eos_id, buffer)
        sampling = {
            "temperature": temperature, "top_k": top_k, "top_p": top_p,
            "seeds": seed + tf.range(batch),  # row i: seed + i, as Generator.generate
        }

        def decode():  # the loop of Generator.generate (kerasllm.generation.loop)
            return loop.decode(model, buffer, lengths, new, sampling, tf.zeros([0], tf.int32))

        # An empty batch has no shortest prompt to start from: it returns an empty batch.
        buffer = tf.cond(batch > 0, decode, lambda: buffer)
        new_ids = tf.gather(buffer, lengths[:, None] + tf.range(new)[None, :], batch_dims=1)
        return {
            "text": tokenizer.tf_decode(new_ids),
            "token_ids": new_ids,
            "prompt_tokens": prompt_tokens,
        }

    def _score(self, text):
        # The evaluate recipe's sliding window (kerasllm.training.metrics.language_model_loss)
        # over <eos> + text, batched: window j of a row starts at min(j * stride, n - block)
        # and scores the targets after the previous window's last one, so each token is scored
        # once with at least block - stride tokens of context.
        model, tokenizer = self._keras.model, self._keras.tokenizer
        ids = encode(tokenizer, text)
        counts = tf.cast(ids.row_lengths(), tf.int32)  # targets per row: every text token
        block, stride = self.block_size, self.score_stride
        batch, longest = tf.shape(counts)[0], tf.reduce_max(tf.concat([counts, [0]], 0))
        windows = tf.where(counts <= block, 1, 1 + (counts - block + stride - 1) // stride)
        sequence = tf.concat(
            [tf.fill([batch, 1], self.eos_id), ids.to_tensor(self.pad_id, shape=[batch, longest])], axis=1
        )
        sequence = tf.pad(sequence, [[0, 0], [0, block]], constant_values=self.pad_id)
        j = tf.range(tf.reduce_max(tf.concat([windows, [1]], 0)))[None, :]  # (1, J)
        starts = tf.minimum(j * stride, tf.maximum(counts - block, 0)[:, None])  # (B, J)
        last = tf.minimum(starts + block, counts[:, None])  # last target each window scores
        first = tf.concat([tf.zeros_like(last[:, :1]), last[:, :-1]], axis=1)  # exclusive
        index = starts[:, :, None] + tf.range(block)[None, None, :]  # (B, J, W) input positions
        target = index + 1
        scored = (target > first[:, :, None]) & (target <= last[:, :, None]) & (j < windows[:, None])[:, :, None]
        logits = model(tf.reshape(tf.gather(sequence, index, batch_dims=1), [-1, block]))
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        targets = tf.reshape(tf.gather(sequence, target, batch_dims=1), [-1, block])
        picked = tf.reshape(tf.gather(log_probs, targets, batch_dims=2), tf.shape(index))
        log_likelihood = tf.reduce_sum(tf.where(scored, picked, 0.0), axis=[1, 2])
        perplexity = tf.exp(-log_likelihood / tf.cast(tf.maximum(counts, 1), tf.float32))
        return {"log_likelihood": log_likelihood, "token_count": counts, "perplexity": perplexity}

    def _next_token_logits(self, token_ids):
        model = self._keras.model
        checks = check_ids(token_ids, self.vocab_size, "next_token_logits")
        checks.append(
            tf.debugging.assert_positive(
                tf.shape(token_ids)[1], message="next_token_logits: token_ids needs at least one token"
            )
        )
        if self.context is not None:
            if self.truncate == "error":
                checks.append(
                    tf.debugging.assert_less_equal(
                        tf.shape(token_ids)[1], self.block_size,
                        message=f"next_token_logits: more than block_size = {self.block_size} tokens",
                    )
                )
            token_ids = token_ids[:, -self.block_size:]
        with tf.control_dependencies(checks):
            token_ids = tf.identity(token_ids)
        return {"logits": model(token_ids)[:, -1]}
