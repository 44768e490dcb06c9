"""Supervised fine-tuning: prompt -> response pairs or chat conversations, packed into rows,
loss on responses (assistant turns) only."""

from dataclasses import dataclass

import keras
import numpy as np

from kerasllm.data.batches import make_dataset
from kerasllm.data.readers import has_messages, read_conversations, read_prompt_response
from kerasllm.errors import DataError
from kerasllm.models import GPT
from kerasllm.models.lora import apply_lora
from kerasllm.training.finetune.common import holdout
from kerasllm.training.optimizers import build_optimizer


def pack_sft_examples(tokenizer, prompts, responses, block_size, pack=True):
    """Packs `<bos> prompt response <eos>` examples into rows for next-token training.

    Whole examples are placed one after another into rows of `block_size + 1` tokens (an
    example never straddles two rows; one longer than a row is truncated at its end). The loss
    weight of a target is 1 only where the target is a response token or the closing `<eos>`:
    prompt tokens, `<bos>` and padding never contribute to the loss. Each example gets its own
    segment id (1, 2, ... in a row; padding 0): a GPT given them attends only within an example
    and restarts positions at each one, so packing changes nothing an example computes.

    Args:
        pack: place several examples in a row; `False` gives one example per row (recurrent
            models, whose state would otherwise carry from one example into the next).

    Returns:
        `(x, y, weights, segment_ids)`, each `(rows, block_size)`: inputs, next-token targets,
        loss weights and the segment id of each input token.

    Examples:

    >>> from kerasllm.tokenizers import CharTokenizer
    >>> tok = CharTokenizer.train(["abc"])
    >>> x, y, w, seg = pack_sft_examples(tok, ["ab", "b"], ["c", "a"], block_size=10)
    >>> tok.decode(y[0][w[0] > 0], skip_special_tokens=False)
    'c<eos>a<eos>'
    >>> seg[0].tolist()
    [1, 1, 1, 1, 1, 2, 2, 2, 2, 0]
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    examples = []
    for prompt, response in zip(tokenizer.encode_batch(list(prompts)), tokenizer.encode_batch(list(responses))):
        prompt_ids = [tokenizer.bos_id, *prompt.tolist()]
        response_ids = [*response.tolist(), tokenizer.eos_id]
        examples.append((prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)))
    return pack_examples(examples, block_size, tokenizer.pad_id, pack)


def pack_chat_examples(tokenizer, conversations, block_size, pack=True):
    """Packs chat conversations, rendered with the tokenizer's chat template, into rows.

    Each conversation is `PretrainedTokenizer.encode_chat`'s ids (the template writes any
    `<bos>` and end-of-turn tokens itself, so none are added); the loss weight is 1 exactly on
    the tokens of assistant turns. Rows, segments and truncation are as in `pack_sft_examples`.

    Args:
        tokenizer: a tokenizer with a `chat_template` (a checkpoint's `PretrainedTokenizer`).
        conversations: lists of `{"role": ..., "content": ...}` messages.

    Returns:
        `(x, y, weights, segment_ids)`, each `(rows, block_size)`.
    """
    examples = [tuple(a.tolist() for a in tokenizer.encode_chat(messages)) for messages in conversations]
    return pack_examples(examples, block_size, tokenizer.pad_id, pack)


def pack_examples(examples, block_size, pad_id, pack=True):
    """Packs `(token_ids, scored)` examples into `(x, y, weights, segment_ids)` rows.

    `scored[t]` is 1 where token `t` is one the model should learn to produce; the weight of
    target `t` (token `t + 1`) is `scored[t + 1]`. See `pack_sft_examples`.
    """
    row_length = block_size + 1
    rows, weights, segments = [], [], []
    row, weight, segment = [], [], []
    for tokens, scored in examples:
        tokens, scored = list(tokens)[:row_length], list(scored)[:row_length]
        if row and (not pack or len(row) + len(tokens) > row_length):
            rows.append(row)
            weights.append(weight)
            segments.append(segment)
            row, weight, segment = [], [], []
        segment += [(segment[-1] if segment else 0) + 1] * len(tokens)
        row += tokens
        weight += scored
    if row:
        rows.append(row)
        weights.append(weight)
        segments.append(segment)
    if not rows:
        raise DataError("no prompt/response examples to train on")
    ids = np.full((len(rows), row_length), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), row_length), dtype=np.float32)
    segment_ids = np.zeros((len(rows), row_length), dtype=np.int32)
    for i, (r, m, g) in enumerate(zip(rows, weights, segments)):
        ids[i, : len(r)] = r
        mask[i, : len(m)] = m
        segment_ids[i, : len(g)] = g
    # The weight of target t (token t+1) is whether token t+1 belongs to a response.
    return ids[:, :-1], ids[:, 1:], mask[:, 1:], segment_ids[:, :-1]


def sft_loss():
    """Next-token cross-entropy averaged over the weighted (response) targets only."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")


@dataclass
class Examples:
    """Packed rows `(x, y, weights, segment_ids)` for training and validation."""

    examples: int
    pack: bool
    train: tuple
    val: tuple

    @property
    def train_size(self):
        return len(self.train[0])


def load_examples(config, tokenizer, backbone):
    """Reads and packs the training file (the validation rows held out when no
    `finetune.val_data` is given).

    A `.jsonl` file whose rows hold `messages` is chat data, rendered with the tokenizer's
    chat template (loss on assistant turns only); otherwise rows are prompt/response pairs.
    """
    ft = config.finetune
    pack = isinstance(backbone, GPT)  # an LSTM's state would leak between packed examples
    count, rows = read_and_pack(config.data.dataset, config, tokenizer, pack)
    if ft.val_data:
        _, val = read_and_pack(ft.val_data, config, tokenizer, pack)
    else:
        keep, held = holdout(len(rows[0]), ft.val_fraction, config.train.seed)
        rows, val = tuple(a[keep] for a in rows), tuple(a[held] for a in rows)
    return Examples(count, pack, rows, val)


def read_and_pack(path, config, tokenizer, pack):
    """`(examples, rows)` of one SFT file: chat conversations or prompt/response pairs."""
    ft = config.finetune
    if has_messages(path):
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"{path}: rows hold \"messages\" (chat) but the model's tokenizer has no chat template "
                "(no chat_template key in its tokenizer_config.json); use a chat checkpoint or "
                f"{ft.prompt_field!r}/{ft.response_field!r} rows (finetune.prompt_field, finetune.response_field)"
            )
        conversations = read_conversations(path)
        return len(conversations), pack_chat_examples(tokenizer, conversations, ft.max_length, pack=pack)
    prompts, responses = read_prompt_response(path, ft.prompt_field, ft.response_field)
    return len(prompts), pack_sft_examples(tokenizer, prompts, responses, ft.max_length, pack=pack)


def build(config, backbone, tokenizer, examples):
    """The pretrained LM itself (with LoRA adapters if `finetune.lora_rank`), compiled."""
    ft = config.finetune
    if ft.lora_rank:
        apply_lora(backbone, ft.lora_rank, alpha=ft.lora_alpha, targets=ft.lora_targets)
    backbone.compile(optimizer=build_optimizer(config.train, backbone), loss=sft_loss(),
                     jit_compile=config.train.jit_compile)
    return backbone


def describe(config, examples):
    x, _, w, _ = examples.train
    return (
        f"sft: {examples.examples:,} examples packed into {len(x) + len(examples.val[0]):,} rows of "
        f"{config.finetune.max_length} tokens ({int(w.sum()):,} response targets)"
    )


def _inputs(examples, rows):
    x, y, w, seg = rows
    return ({"token_ids": x, "segment_ids": seg} if examples.pack else x), y, w


def datasets(config, tokenizer, examples):
    """`(train_ds, val_ds or None, {})`."""
    train = config.train
    train_ds = make_dataset(_inputs(examples, examples.train), train.batch_size, True, train.seed).repeat()
    val_ds = make_dataset(_inputs(examples, examples.val), train.batch_size) if len(examples.val[0]) else None
    return train_ds, val_ds, {}


def evaluate(model, config, tokenizer, examples, log):
    """The kept model's validation loss (response tokens only)."""
    if not len(examples.val[0]):
        return {"task": "sft", "val_loss": None}
    _, val_ds, _ = datasets(config, tokenizer, examples)
    val_loss = float(model.evaluate(val_ds, verbose=0, return_dict=True)["loss"])
    log(f"sft: validation loss {val_loss:.4f} on {len(examples.val[0]):,} rows")
    return {"task": "sft", "val_loss": val_loss}


def info(examples):
    return {}
