"""The model behind the server: a run directory's language model or classifier."""

import time
from pathlib import Path

import numpy as np
from keras import ops

from kerasllm.errors import ConfigError, RunError

ROLES = ("system", "user", "assistant")


class ServedModel:
    """A loaded run plus the facts the HTTP layer needs.

    Args:
        config: the run's `Config` (with any `--set` overrides applied).
        tokenizer: its tokenizer.
        model: a `GPT`, `LSTMLanguageModel` or `SequenceClassifier`.
        name: the model id clients send (default: the run directory's name).
        sft: the run was fine-tuned on `<bos> prompt response <eos>` examples; chat then
            renders the conversation as that prompt.
        created: Unix time reported by `/v1/models`.
    """

    def __init__(self, config, tokenizer, model, name, sft=False, created=None):
        from kerasllm.models.classifier import SequenceClassifier

        self.config = config
        self.tokenizer = tokenizer
        self.model = model
        self.name = name
        self.sft = sft
        self.created = int(created or time.time())
        self.kind = "classifier" if isinstance(model, SequenceClassifier) else "language_model"
        self.block_size = int(config.model.block_size)
        self.is_gpt = self.kind == "language_model" and config.model.arch == "gpt"
        export = config.export
        if export.max_new_tokens < 1:
            raise ConfigError(f"export.max_new_tokens = {export.max_new_tokens}: expected a positive integer")
        # As the SavedModel export: a GPT's prompt and continuation share its context.
        self.max_new_tokens = min(export.max_new_tokens, self.block_size - 1) if self.is_gpt else export.max_new_tokens
        self.truncate = export.truncate
        self.score_stride = export.score_stride or None
        self.max_length = config.finetune.max_length or self.block_size  # classifier inputs

    @classmethod
    def load(cls, path, overrides=(), name=None):
        """Loads a run directory (pretrained or fine-tuned); `overrides` are `--set` strings."""
        from kerasllm.config import load_config
        from kerasllm.training import load_run
        from kerasllm.training.finetune import read_finetune_info

        path = Path(path)
        if not path.exists():
            raise RunError(f"--model {path}: no such run directory")
        config, tokenizer, model = load_run(path)
        if overrides and not (path / "config.toml").exists():
            raise RunError(f"--set: {path} is a published checkpoint (no config.toml); --set applies to run "
                           "directories")
        if overrides:
            config = load_config(str(path / "config.toml"), list(overrides))
        info = read_finetune_info(path) or {}
        stamp = path / "config.toml" if (path / "config.toml").exists() else path  # a checkpoint folder has none
        return cls(config, tokenizer, model, name or path.resolve().name, sft=info.get("task") == "sft",
                   created=stamp.stat().st_mtime)

    # --- text <-> ids --------------------------------------------------------------------
    def encode(self, text):
        return [int(i) for i in self.tokenizer.encode(text)]

    def decode(self, ids):
        return self.tokenizer.decode(list(ids))

    def token_text(self, token_id):
        """One token as text, special tokens by name (for `logprobs`)."""
        return self.tokenizer.decode([int(token_id)], skip_special_tokens=False)

    def fit_prompt(self, ids, max_new_tokens):
        """Prompt ids for generation: `<eos>` for an empty prompt; a GPT keeps the last ones that fit.

        Raises `ValueError` when the prompt does not fit and `export.truncate = "error"`.
        """
        ids = list(ids) or [int(self.tokenizer.eos_id)]
        if not self.is_gpt:
            return ids
        limit = self.block_size - max_new_tokens
        if len(ids) > limit:
            if self.truncate == "error":
                raise ValueError(
                    f"the prompt has {len(ids)} tokens; with max_tokens = {max_new_tokens} it must have at most "
                    f"{limit} (context {self.block_size}; the server runs with export.truncate = 'error')"
                )
            ids = ids[-limit:]
        return ids

    # --- chat ----------------------------------------------------------------------------
    def render_chat(self, messages):
        """Prompt ids, stop strings and stop ids for a conversation (`[{"role", "content"}, ...]`).

        A model whose tokenizer has a chat template (an imported chat checkpoint) gets the
        conversation rendered by it with the generation prompt, and stops at the template's
        end-of-turn marker (`end_of_turn`), an id when it is a special token. A run fine-tuned
        for prompt -> response (`finetune.task = "sft"`) gets what it was trained on: `<bos>`
        and the user turns, and it stops at `<eos>`. Any other language model gets the plain
        template

            System: ...
            User: ...
            Assistant: ...
            Assistant:

        and stops where it starts a new `User:` or `System:` turn.
        """
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            marker = self.end_of_turn()
            special = marker in getattr(self.tokenizer, "special_tokens", [])
            return self.encode(text), [] if special or not marker else [marker], \
                [self.tokenizer.token_to_id(marker)] if special else []
        if self.sft:
            prompt = "\n".join(m["content"] for m in messages if m["role"] == "user")
            return [int(self.tokenizer.bos_id), *self.encode(prompt)], [], []
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return self.encode("\n".join(lines + ["Assistant:"])), ["\nUser:", "\nSystem:"], []

    def end_of_turn(self):
        """What the chat template writes after an assistant's message (`<|im_end|>`, `<|eot_id|>`,
        `<end_of_turn>`, ...): the first special token there, else the text up to a line end.

        Found by rendering a one-word answer; "" when the template adds nothing after it.
        """
        probe = [{"role": "user", "content": "hi"}]
        prompt = self.tokenizer.apply_chat_template(probe, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(probe + [{"role": "assistant", "content": "kerasllm"}])
        tail = full[len(prompt):].split("kerasllm", 1)[-1] if full.startswith(prompt) else ""
        specials = [t for t in getattr(self.tokenizer, "special_tokens", []) if t and t in tail]
        if specials:
            return min(specials, key=tail.index)
        return tail.strip().split("\n")[0]

    # --- classification ------------------------------------------------------------------
    def classify(self, texts):
        """Probabilities `(batch, classes)` exactly as the SavedModel's `classify` computes them."""
        from kerasllm.training.finetune import encode_texts

        ids = encode_texts(self.tokenizer, texts, self.max_length)  # first max_length tokens, <pad>-padded
        return np.asarray(ops.convert_to_numpy(ops.softmax(self.model(ids, training=False), axis=-1)), np.float64)

    @property
    def labels(self):
        return list(self.model.labels)
