"""A HF `tokenizer.json` for each kerasllm tokenizer kind that has an equivalent."""

import json

from kerasllm.errors import ConfigError


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (the alphabet of byte-level BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def hf_tokenizer_json(tokenizer):
    """The text of a HF `tokenizer.json` encoding exactly as `tokenizer` does, or `None` for a
    SentencePiece model (written as `tokenizer.model` instead).

    Raises:
        ConfigError: a kind without a `tokenizer.json` equivalent (word, jieba).

    Examples:

    >>> from kerasllm.tokenizers import CharTokenizer
    >>> from tokenizers import Tokenizer
    >>> tok = CharTokenizer.train(["hello"])
    >>> Tokenizer.from_str(hf_tokenizer_json(tok)).encode("hello<eos>").ids == tok.encode("hello<eos>").tolist()
    True
    """
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    kind = tokenizer.kind
    if kind == "pretrained":
        return tokenizer.tokenizer_json
    if kind == "sentencepiece":
        return None
    if kind == "bpe":
        pairs = [tuple(m.split(" ")) for m in tokenizer.merges]
        hf = HFTokenizer(models.BPE(vocab=tokenizer.vocabulary, merges=pairs))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
    elif kind == "byte":
        alphabet = bytes_to_unicode()
        vocab = {name: i for i, name in enumerate(tokenizer.special_tokens)}
        vocab.update({alphabet[b]: tokenizer.offset + b for b in range(256)})
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
    elif kind == "char":
        vocab = {name: i for i, name in enumerate(tokenizer.special_tokens)}
        vocab.update({c: len(tokenizer.special_tokens) + i for i, c in enumerate(tokenizer.chars)})
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        hf.decoder = decoders.Fuse()
    elif kind == "wordpiece":
        vocab = {piece: i for i, piece in enumerate(tokenizer.vocabulary)}
        hf = HFTokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=100))
        hf.normalizer = normalizers.BertNormalizer(
            clean_text=False, handle_chinese_chars=True, strip_accents=tokenizer.lowercase, lowercase=tokenizer.lowercase,
        )
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.decoder = decoders.WordPiece()
    else:
        raise ConfigError(
            f"data.tokenizer = {kind!r} has no Hugging Face tokenizer.json equivalent; export supports bpe, byte, "
            "char, wordpiece, sentencepiece and pretrained"
        )
    hf.add_special_tokens(list(tokenizer.special_tokens))
    return hf.to_str()


def tokenizer_config(tokenizer, block_size):
    """`tokenizer_config.json`: the roles as token strings (read back by `PretrainedTokenizer`)."""
    if tokenizer.kind == "pretrained":
        roles = tokenizer.roles
    else:
        roles = {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"}
    config = {f"{role}_token": token for role, token in roles.items()}
    config.update(model_max_length=block_size, clean_up_tokenization_spaces=False,
                  add_bos_token=False, add_eos_token=False)
    if getattr(tokenizer, "chat_template", None):  # a chat checkpoint stays one when exported
        config["chat_template"] = tokenizer.chat_template
    return config


def gpt2_vocab_files(tokenizer_json):
    """(vocab.json text, merges.txt text) of a byte-level BPE `tokenizer.json` (GPT-2 loaders read these)."""
    spec = json.loads(tokenizer_json)
    if spec["model"]["type"] != "BPE":
        return None
    vocab = dict(spec["model"]["vocab"])
    for token in spec.get("added_tokens", []):
        vocab[token["content"]] = token["id"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return json.dumps(vocab, ensure_ascii=False), "#version: 0.2\n" + "\n".join(merges) + "\n"
