"""The tokenizer of a published checkpoint, wrapped in kerasllm's `Tokenizer` interface."""

import base64
import json
from pathlib import Path

import numpy as np

from kerasllm.errors import DataError
from kerasllm.tokenizers.base import Tokenizer, as_ragged, graph_call, register_tokenizer

# Where tokenizer_config.json names no token for a role, these names are tried in order.
_ROLE_NAMES = {
    "bos": ("<|begin_of_text|>", "<s>", "<|endoftext|>", "<bos>"),
    "eos": ("<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>"),
    "pad": ("<pad>", "<|pad|>", "<|finetune_right_pad_id|>"),
    "unk": ("<unk>", "<|unk|>"),
}


@register_tokenizer("pretrained")
class PretrainedTokenizer(Tokenizer):
    """A checkpoint's own tokenizer: HF `tokenizer.json` or SentencePiece `tokenizer.model`.

    Python encoding runs the checkpoint's tokenizer itself (HF `tokenizers`, or the
    `sentencepiece` library), so ids are the ones the checkpoint was trained on; special tokens
    written in the text (`<|endoftext|>`) map to their ids, and no BOS/EOS is added. Graph
    encoding (tf.data, SavedModel) uses keras-hub's `BytePairTokenizer` for byte-level BPE and
    its `SentencePieceTokenizer` (tensorflow-text) for SentencePiece models.

    Roles: `bos`/`eos`/`pad`/`unk` come from `tokenizer_config.json` (`bos_token`, ...), then
    the usual names (`<|endoftext|>`, `<s>`, `</s>`, ...). A checkpoint without a pad
    token pads with `eos`; without an unk token (byte-level BPE needs none) `unk_id` is `eos`
    too; without a bos token (Qwen) `bos` is `eos`.

    Args:
        tokenizer_json: the text of a HF `tokenizer.json`, or `None`.
        sp_model: the bytes of a SentencePiece `tokenizer.model`, or `None` (one of the two).
        roles: dict role -> token string, for bos/eos/pad/unk (missing roles fall back as above).
        chat_template: the Jinja template of `tokenizer_config.json`'s `chat_template`, or `None`.

    Examples:

    >>> from tokenizers import Tokenizer as HF, models, pre_tokenizers, decoders
    >>> hf = HF(models.BPE(vocab={"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}, merges=[("a", "b")]))
    >>> hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    >>> hf.decoder = decoders.ByteLevel()
    >>> _ = hf.add_special_tokens(["<|endoftext|>"])
    >>> tok = PretrainedTokenizer(hf.to_str(), roles={"eos": "<|endoftext|>"})
    >>> tok.encode("abab<|endoftext|>").tolist(), tok.pad_id
    ([3, 3, 0], 0)
    """

    def __init__(self, tokenizer_json=None, sp_model=None, roles=None, chat_template=None):
        if (tokenizer_json is None) == (sp_model is None):
            raise DataError("pretrained tokenizer: give exactly one of tokenizer_json and sp_model")
        self.tokenizer_json = tokenizer_json
        self.sp_model = bytes(sp_model) if sp_model is not None else None
        self._hub = None
        if tokenizer_json is not None:
            from tokenizers import Tokenizer as HFTokenizer

            self._hf = HFTokenizer.from_str(tokenizer_json)
            spec = json.loads(tokenizer_json)
            self._vocab = self._hf.get_vocab(with_added_tokens=True)
            self.special_tokens = [t["content"] for t in spec.get("added_tokens", []) if t.get("special")]
        else:
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_proto=self.sp_model)
            self._vocab = {self._sp.id_to_piece(i): i for i in range(self._sp.get_piece_size())}
            self.special_tokens = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())
                                   if self._sp.is_control(i) or self._sp.is_unknown(i)]
        self.roles = self._resolve_roles(dict(roles or {}))
        self.chat_template = chat_template
        self._units = self._single_units()
        self._unit_tables = None

    def _resolve_roles(self, roles):
        resolved = {}
        for role, names in _ROLE_NAMES.items():
            token = roles.get(role)
            if token is None or token not in self._vocab:
                token = next((name for name in names if name in self._vocab), None)
            if token is not None:
                resolved[role] = token
        if "eos" not in resolved:
            raise DataError(f"pretrained tokenizer: no end-of-text token; tried {', '.join(_ROLE_NAMES['eos'])}")
        for role in ("bos", "pad", "unk"):
            resolved.setdefault(role, resolved["eos"])
        for token in resolved.values():
            if token not in self.special_tokens:
                self.special_tokens.append(token)
        return resolved

    @classmethod
    def train(cls, texts, vocab_size=1000, special_tokens=("<|endoftext|>",), **kwargs):
        """A new GPT-2 style byte-level BPE in `tokenizer.json` form (HF `tokenizers`' trainer).

        Checkpoints bring their own tokenizer; this makes one of the same kind from text, with
        `<|endoftext|>` (id 0) as eos, bos, pad and unk, as GPT-2 has.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if isinstance(texts, str):
            texts = [texts]
        names = [t for t in special_tokens if not t.startswith("<") or t.startswith("<|")] or ["<|endoftext|>"]
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size or 1000, special_tokens=names, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        hf.train_from_iterator(list(texts), trainer)
        return cls(tokenizer_json=hf.to_str(), roles={"eos": names[0]})

    @classmethod
    def from_directory(cls, directory):
        """Reads the tokenizer files of a Hugging Face checkpoint folder.

        Uses `tokenizer.json` when it is byte-level BPE (GPT-2, Llama 3, Qwen) or the only file,
        else `tokenizer.model` (SentencePiece: Llama 2, Mistral), else `vocab.json` +
        `merges.txt` (GPT-2 byte-level BPE); roles from `tokenizer_config.json`.
        """
        directory = Path(directory)
        roles, template = _roles_from_configs(directory)
        kwargs = dict(roles=roles, chat_template=template)
        if (directory / "tokenizer.json").is_file():
            tokenizer = cls(tokenizer_json=(directory / "tokenizer.json").read_text(encoding="utf-8"), **kwargs)
            if tokenizer.is_byte_level or not (directory / "tokenizer.model").is_file():
                return tokenizer
            # Llama 2 / Mistral: the SentencePiece model is the reference and also runs in graphs.
            return cls(sp_model=(directory / "tokenizer.model").read_bytes(), **kwargs)
        if (directory / "tokenizer.model").is_file():
            return cls(sp_model=(directory / "tokenizer.model").read_bytes(), **kwargs)
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            return cls(tokenizer_json=_byte_level_json(directory / "vocab.json", directory / "merges.txt"), **kwargs)
        raise DataError(
            f"{directory}: no tokenizer file; expected tokenizer.json, vocab.json + merges.txt, or tokenizer.model"
        )

    def get_config(self):
        return {
            "tokenizer_json": self.tokenizer_json,
            "sp_model": base64.b64encode(self.sp_model).decode("ascii") if self.sp_model is not None else None,
            "roles": self.roles,
            "chat_template": self.chat_template,
        }

    @classmethod
    def from_config(cls, config):
        sp_model = config.get("sp_model")
        return cls(config.get("tokenizer_json"), base64.b64decode(sp_model) if sp_model else None, config.get("roles"),
                   config.get("chat_template"))

    # --- ids -----------------------------------------------------------------------------
    def token_to_id(self, token):
        return self._vocab.get(token, self._vocab[self.roles["unk"]])

    @property
    def pad_id(self):
        return self._vocab[self.roles["pad"]]

    @property
    def unk_id(self):
        return self._vocab[self.roles["unk"]]

    @property
    def bos_id(self):
        return self._vocab[self.roles["bos"]]

    @property
    def eos_id(self):
        return self._vocab[self.roles["eos"]]

    @property
    def vocabulary_size(self):
        return max(self._vocab.values()) + 1

    def _dropped_ids(self):
        real_unk = self.roles["unk"] not in (self.roles["eos"], self.roles["pad"], self.roles["bos"])
        return [i for i in self.special_ids if not (real_unk and i == self.unk_id)]

    @property
    def is_byte_level(self):
        if self.tokenizer_json is None:
            return False
        spec = json.loads(self.tokenizer_json)
        return spec["model"]["type"] == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))

    def _single_units(self):
        """`"bytes"` or `"chars"` for a BPE `tokenizer.json` without merges or a normalizer (every
        byte or character is its own token, as kerasllm's byte and char tokenizers export), else
        `None`. keras-hub's `BytePairTokenizer` needs merges, so these encode in graphs by lookup."""
        if self.tokenizer_json is None:
            return None
        spec = json.loads(self.tokenizer_json)
        if spec["model"]["type"] != "BPE" or spec["model"].get("merges") or spec.get("normalizer"):
            return None
        return "bytes" if self.is_byte_level else "chars"

    # --- Python side ---------------------------------------------------------------------
    def encode(self, text):
        if self.tokenizer_json is not None:
            return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, np.int32)
        return super().encode(text)  # SentencePiece: special strings split out by the base class

    def encode_batch(self, texts):
        if self.tokenizer_json is not None:
            return [np.asarray(e.ids, np.int32) for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]
        return [self.encode(text) for text in texts]

    def _encode_text(self, text):
        return np.asarray(self._sp.encode(text), np.int32)

    def _decode_ids(self, ids):
        ids = [int(i) for i in ids]
        if self.tokenizer_json is not None:
            return self._hf.decode(ids, skip_special_tokens=False)
        return self._sp.decode(ids)

    # --- chat ----------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt=False):
        """Renders `[{"role": ..., "content": ...}, ...]` with the checkpoint's chat template.

        Rendered as transformers does (Jinja2 sandbox, `trim_blocks`, `lstrip_blocks`, the
        `bos_token`/`eos_token` variables and `raise_exception`).

        Raises:
            DataError: the checkpoint has no `chat_template`, or the template rejects the messages.
        """
        if not self.chat_template:
            raise DataError("tokenizer_config.json has no chat_template: this checkpoint is not a chat model")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=list(messages), add_generation_prompt=add_generation_prompt,
                bos_token=self.roles["bos"], eos_token=self.roles["eos"],
            )
        except TemplateError as error:
            raise DataError(f"chat_template: {error}") from None

    def chat_turns(self, messages):
        """`(prompt, response)` text pairs of a conversation, one per assistant turn.

        Each prompt is the conversation rendered up to that turn with the generation prompt;
        its response is what the full rendering adds for the assistant's message, so the
        concatenation of the pairs is the whole rendered conversation and the loss can cover
        assistant turns only (SFT).
        """
        pairs, done = [], ""
        for index, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            prompt = self.apply_chat_template(messages[:index], add_generation_prompt=True)
            full = self.apply_chat_template(messages[: index + 1])
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise DataError("chat_template: a turn's rendering does not extend the conversation's; cannot mask it")
            pairs.append((prompt[len(done):], full[len(prompt):]))
            done = full
        return pairs

    def encode_chat(self, messages):
        """`(ids, assistant_mask)` of a conversation rendered with the chat template.

        Each `chat_turns` pair is encoded on its own, prompt then response, so the ids of a
        prompt are the ones `generate --chat` feeds the model and a response starts where
        generation starts. `assistant_mask` is 1 on the response tokens of every assistant
        turn (its content and the template's end-of-turn text) and 0 on everything else
        (system and user turns, role headers, the generation prompt).

        Examples:

        >>> from tokenizers import Tokenizer as HF, models, pre_tokenizers, decoders
        >>> hf = HF(models.BPE(vocab={"<|endoftext|>": 0, "<|im_end|>": 1, "a": 2, "b": 3, ":": 4,
        ...                                 "u": 5},
        ...                    merges=[]))
        >>> hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        >>> _ = hf.add_special_tokens(["<|endoftext|>", "<|im_end|>"])
        >>> template = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}<|im_end|>{% endfor %}"
        ...             "{% if add_generation_prompt %}a:{% endif %}")
        >>> tok = PretrainedTokenizer(hf.to_str(), roles={"eos": "<|endoftext|>"}, chat_template=template)
        >>> ids, mask = tok.encode_chat([{"role": "user", "content": "b"}, {"role": "assistant", "content": "bb"}])
        >>> ids.tolist(), mask.tolist()
        ([5, 4, 3, 1, 2, 4, 3, 3, 1], [0, 0, 0, 0, 0, 0, 1, 1, 1])
        """
        ids, mask = [], []
        for prompt, response in self.chat_turns(messages):
            prompt_ids, response_ids = self.encode(prompt).tolist(), self.encode(response).tolist()
            ids += prompt_ids + response_ids
            mask += [0] * len(prompt_ids) + [1] * len(response_ids)
        return np.asarray(ids, np.int32), np.asarray(mask, np.int8)

    def end_of_turn_ids(self):
        """The ids that end an assistant turn: the first special token the chat template
        writes after an assistant message's content (`<|im_end|>`, `<|eot_id|>`,
        `<end_of_turn>`, `</s>`), then `eos`.

        Raises:
            DataError: the checkpoint has no `chat_template`.
        """
        marker = "kerasllm-assistant-content"
        rendered = self.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
        )
        after = rendered[rendered.rindex(marker) + len(marker):] if marker in rendered else ""
        found = sorted((after.index(token), token) for token in self.special_tokens if token in after)
        ids = [self._vocab[found[0][1]]] if found else []
        return tuple(dict.fromkeys([*ids, self.eos_id]))

    # --- graph side ----------------------------------------------------------------------
    @property
    def hub_tokenizer(self):
        if self._hub is None:
            import keras_hub
            import tensorflow as tf

            with tf.init_scope():
                if self.sp_model is not None:
                    self._hub = keras_hub.tokenizers.SentencePieceTokenizer(proto=self.sp_model, dtype="int32")
                elif self.is_byte_level:
                    model = json.loads(self.tokenizer_json)["model"]
                    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
                    self._hub = keras_hub.tokenizers.BytePairTokenizer(
                        vocabulary=self._vocab, merges=merges, unsplittable_tokens=list(self.special_tokens),
                        dtype="int32",
                    )
                else:
                    raise DataError(
                        "pretrained tokenizer: only byte-level BPE and SentencePiece tokenizers encode inside "
                        "TensorFlow graphs (tf_encode / SavedModel export)"
                    )
        return self._hub

    def tf_encode(self, texts):
        if self.sp_model is not None or self._units:  # special tokens cut out by the base class
            return super().tf_encode(texts)
        import tensorflow as tf

        texts = tf.convert_to_tensor(texts, tf.string)
        ids = as_ragged(tf.cast(graph_call(self.hub_tokenizer, "tokenize", tf.reshape(texts, [-1])), tf.int32))
        return ids[0] if texts.shape.rank == 0 else ids

    def _tf_encode_text(self, texts):
        import tensorflow as tf

        if self._units:
            return self._tf_encode_units(texts)
        return as_ragged(tf.cast(graph_call(self.hub_tokenizer, "tokenize", texts), tf.int32))

    def _tf_decode_ids(self, ids):
        import tensorflow as tf

        if self._units:
            _, strings = self._lookup_tables()
            joined = tf.strings.reduce_join(tf.ragged.map_flat_values(tf.gather, strings, ids), axis=-1)
            return tf.strings.unicode_transcode(joined, "UTF-8", "UTF-8", errors="replace")
        return graph_call(self.hub_tokenizer, "detokenize", ids)

    def _tf_encode_units(self, texts):
        import tensorflow as tf

        table, _ = self._lookup_tables()
        if self._units == "bytes":
            pieces = tf.strings.bytes_split(texts)
            units = pieces.with_flat_values(tf.cast(tf.reshape(tf.io.decode_raw(pieces.flat_values, tf.uint8), [-1]), tf.int32))
            ids = tf.ragged.map_flat_values(tf.gather, table, units)
        else:
            ids = tf.ragged.map_flat_values(table.lookup, tf.strings.unicode_decode(texts, "UTF-8", errors="replace"))
        return tf.ragged.boolean_mask(ids, ids >= 0)  # like HF: a unit outside the vocabulary is unk or dropped

    def _lookup_tables(self):
        """`(unit -> id, id -> the bytes it spells)`, built once: a 256-entry array for byte-level
        vocabularies, a hash table of code points for character ones."""
        if self._unit_tables is None:
            import tensorflow as tf

            from kerasllm.checkpoints.tokenizer_files import bytes_to_unicode

            missing = self.unk_id if self.roles.get("unk") in self._vocab else -1
            by_id = {i: t for t, i in self._vocab.items()}
            spelled = [by_id.get(i, "").encode("utf-8") for i in range(self.vocabulary_size)]
            with tf.init_scope():
                if self._units == "bytes":
                    alphabet = bytes_to_unicode()
                    byte_of = {c: b for b, c in alphabet.items()}
                    table = tf.constant([self._vocab.get(alphabet[b], missing) for b in range(256)], tf.int32)
                    spelled = [bytes(byte_of[c] for c in t.decode("utf-8")) if all(c in byte_of for c in t.decode("utf-8"))
                               else t for t in spelled]
                else:
                    units = {t: i for t, i in self._vocab.items() if len(t) == 1}
                    table = tf.lookup.StaticHashTable(
                        tf.lookup.KeyValueTensorInitializer(tf.constant([ord(t) for t in units], tf.int32),
                                                            tf.constant(list(units.values()), tf.int32)),
                        default_value=missing,
                    )
                self._unit_tables = (table, tf.constant(spelled, tf.string))
        return self._unit_tables

    def save_hf(self, directory):
        """Writes the checkpoint's tokenizer files (`tokenizer.json` or `tokenizer.model`) and
        a `tokenizer_config.json` naming the roles."""
        directory = Path(directory)
        if self.tokenizer_json is not None:
            (directory / "tokenizer.json").write_text(self.tokenizer_json, encoding="utf-8")
        else:
            (directory / "tokenizer.model").write_bytes(self.sp_model)
        return {f"{role}_token": token for role, token in self.roles.items()}


def _token_text(value):
    return value.get("content") if isinstance(value, dict) else value


def _roles_from_configs(directory):
    """`(roles, chat_template)` from `tokenizer_config.json` (empty and `None` without one)."""
    roles, template = {}, None
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{config_path}: not valid JSON: {error}") from None
        for role in _ROLE_NAMES:
            if config.get(f"{role}_token"):
                roles[role] = _token_text(config[f"{role}_token"])
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return roles, template


def _byte_level_json(vocab_path, merges_path):
    """A GPT-2 `tokenizer.json` built from `vocab.json` + `merges.txt`."""
    vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
    lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
    return byte_level_tokenizer_json(vocab, [line for line in lines if line and not line.startswith("#version")])


def byte_level_tokenizer_json(vocab, merges):
    """A HF `tokenizer.json` (text) for GPT-2 style byte-level BPE.

    Args:
        vocab: dict piece -> id.
        merges: "a b" strings (or pairs), in priority order.

    Tokens spelled `<|...|>` become special (never split).
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    hf = HFTokenizer(models.BPE(vocab=dict(vocab), merges=pairs))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    specials = [t for t in vocab if t.startswith("<|") and t.endswith("|>")]
    if specials:
        hf.add_special_tokens(specials)
    return hf.to_str()
