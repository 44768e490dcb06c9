"""Run configuration: dataclasses loaded from TOML, with `--set key=value` overrides.

A recipe file has one table per dataclass below:

```toml
name = "default"

[model]
arch = "gpt"
n_layer = 4

[data]
dataset = "python-stdlib"

[train]
max_steps = 2000
```

Every key is checked: an unknown key or a value of the wrong type is a `ConfigError` naming
the file (or `--set`), the key and the expected type. A field's metadata also carries its
choices or its range (`bounds=">= 1"`, `"[0, 1)"`, shown by `describe_keys`), and the rules
that tie keys together (`model.n_embd` divisible by `model.n_head`, `train.batch_size` by
`train.grad_accum_steps`, `plan.remat = "on"` only for a GPT without dropout, ...) live here
too, as `_rule` functions. `load_config` runs `Config.validate()` after the overrides, before
anything reads data, so each mistake is one line naming the key and the file or `--set`
that set it.

A mixture lists its corpora as an array of tables inside `[data]`, each its own token store:

```toml
[[data.sources]]
dataset = "books/*.txt"
weight = 3.0

[[data.sources]]
dataset = "code.jsonl"
text_field = "content"
```

`--set` reaches an entry by its index from 0 (`--set data.sources[1].weight=2`; the index one
past the last adds an entry), or replaces the whole list with a TOML array of inline tables
(`--set 'data.sources=[{dataset = "a.txt"}, {dataset = "b.txt", weight = 2}]'`, `[]`: none).
An error names the entry (`data.sources[1].weight`).
"""

import copy
import dataclasses
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from kerasllm.errors import ConfigError


@dataclass(frozen=True)
class Bounds:
    """The values a numeric key accepts, written `">= 1"`, `"> 0"` or `"[0, 1)"` in the field.

    Examples:

    >>> bounds = Bounds.parse("[0, 1)")
    >>> bounds.contains(0.0), bounds.contains(1.0), str(bounds)
    (True, False, 'in [0, 1)')
    >>> str(Bounds.parse(">= 1"))
    '>= 1'
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    @classmethod
    def parse(cls, text):
        text = text.strip()
        if text.startswith((">=", ">")):
            return cls(low=float(text.lstrip(">=").strip()), low_open=not text.startswith(">="))
        low, high = (part.strip() for part in text[1:-1].split(","))
        return cls(float(low), float(high), low_open=text[0] == "(", high_open=text[-1] == ")")

    def contains(self, value):
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return bool(above and below)  # False for NaN

    def __str__(self):
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(value):
    return str(int(value)) if float(value).is_integer() else str(value)


def _choice(default, choices, help=""):
    return field(default=default, metadata={"choices": tuple(choices), "help": help})


def _opt(default, help="", bounds=None):
    metadata = {"help": help}
    if bounds is not None:
        metadata["bounds"] = Bounds.parse(bounds)
    return field(default=default, metadata=metadata)


class _Section:
    """What every table's dataclass shares: `validate()` of its own keys."""

    def validate(self):
        """Raises `ConfigError` for the first key out of its choices or range, or rule broken
        within this table; returns the table.

        Builders that take one table (`build_model(ModelConfig(...))`, `build_schedule`) call
        this, so a table made in Python is held to the same rules as a recipe file.
        """
        name = _SECTION_NAMES[type(self)]
        for _, problem in _table_problems(name, self):
            raise ConfigError(problem)
        for keys, sections, check in _RULES:
            if sections == (name,):
                problem = check(self)
                if problem:
                    raise ConfigError(problem)
        return self


@dataclass
class ModelConfig(_Section):
    """Architecture of the language model (GPT decoder or LSTM baseline)."""

    arch: str = _choice("gpt", ["gpt", "lstm"], "model family")
    vocab_size: int = _opt(0, "0: the tokenizer's vocabulary size", bounds=">= 0")
    block_size: int = _opt(128, "context length in tokens", bounds=">= 1")
    n_layer: int = _opt(4, "decoder blocks (GPT) or stacked LSTM layers", bounds=">= 1")
    n_head: int = _opt(4, "attention heads", bounds=">= 1")
    n_kv_head: int = _opt(0, "key/value heads; 0: n_head (multi-head), fewer: grouped-query", bounds=">= 0")
    n_embd: int = _opt(128, "embedding / residual width", bounds=">= 1")
    mlp_hidden: int = _opt(0, "MLP hidden width; 0: 4*n_embd (gelu) or 8/3*n_embd rounded (swiglu)", bounds=">= 0")
    dropout: float = _opt(0.0, "dropout rate on embeddings, residual branches and LSTM outputs", bounds="[0, 1)")
    bias: bool = _opt(True, "biases in Dense and LayerNorm layers")
    tie_embeddings: bool = _opt(True, "share the token embedding with the output head")
    positions: str = _choice("learned", ["learned", "rope"], "position encoding")
    norm: str = _choice("layernorm", ["layernorm", "rmsnorm"], "normalization layer")
    mlp: str = _choice("gelu", ["gelu", "swiglu"], "MLP kind")
    norm_eps: float = _opt(1e-5, "epsilon of the normalization layers", bounds="> 0")
    rope_theta: float = _opt(10000.0, "RoPE base wavelength", bounds="> 0")
    hidden_size: int = _opt(0, "LSTM hidden units; 0: n_embd", bounds=">= 0")
    # Options of published checkpoints (GPT-2, Llama, Mistral, Qwen, Gemma); the defaults change nothing.
    mlp_activation: str = _choice(
        "auto", ["auto", "gelu", "gelu_tanh", "silu", "relu"],
        "MLP activation (swiglu: of the gate); auto: exact gelu for mlp = gelu, silu for swiglu; "
        "gelu_tanh is GPT-2's 'gelu_new'",
    )
    qkv_bias: bool = _opt(False, "biases on the query/key/value projection even when bias = false (Qwen2)")
    head_dim: int = _opt(0, "attention head width; 0: n_embd // n_head (Qwen3 decouples them)", bounds=">= 0")
    qk_norm: bool = _opt(False, "RMSNorm on each head's queries and keys before RoPE (Qwen3)")
    rope_scaling: str = _choice(
        "none", ["none", "linear", "llama3"],
        "RoPE frequency scaling: linear divides positions by rope_factor; llama3 as Llama 3.1",
    )
    rope_factor: float = _opt(1.0, "rope_scaling factor", bounds="> 0")
    rope_low_freq_factor: float = _opt(1.0, "rope_scaling = llama3: low_freq_factor")
    rope_high_freq_factor: float = _opt(4.0, "rope_scaling = llama3: high_freq_factor")
    rope_original_context: int = _opt(8192, "rope_scaling = llama3: original_max_position_embeddings", bounds=">= 1")
    scale_embeddings: bool = _opt(False, "multiply the token embeddings by sqrt(n_embd) before the first block (Gemma)")


@dataclass
class SourceConfig:
    """One corpus of a mixture (a `[[data.sources]]` table), tokenized into its own store."""

    dataset: str = _opt("", "registered dataset name, text file, directory or glob (required)")
    weight: float = _opt(1.0, "share of the training windows drawn from this source, relative to the others", bounds="> 0")
    text_field: str = _opt("", "JSONL field / CSV column holding the text; '': data.text_field")

    def problems(self, key):
        """`(key, message)` for each value of this entry out of range, `key` its `data.sources[i]`."""
        if not self.dataset.strip():
            yield f"{key}.dataset", (f"{key}.dataset is missing: each [[data.sources]] table needs "
                                     'dataset = "FILE, DIRECTORY, GLOB or NAME"')
        for f in dataclasses.fields(self):
            problem = _value_problem(f"{key}.{f.name}", f, getattr(self, f.name))
            if problem:
                yield f"{key}.{f.name}", problem


@dataclass
class DataConfig(_Section):
    """Where the text comes from and how it becomes token windows."""

    dataset: str = _opt(
        "python-stdlib", "registered dataset name, text file, directory or glob"
    )
    tokenizer: str = _opt("char", "tokenizer kind (see kerasllm.tokenizers)")
    vocab_size: int = _opt(0, "target vocabulary size for trained tokenizers; 0: the kind's default", bounds=">= 0")
    val_fraction: float = _opt(0.1, "share of the corpus held out for validation", bounds="(0, 1)")
    split: str = _choice("position", ["position", "document"], "how the validation split is cut")
    stride: int = _opt(0, "step between training windows; 0: block_size (no overlap)", bounds=">= 0")
    seed: int = _opt(1337, "seed of the document split and the shuffle order", bounds=">= 0")
    text_field: str = _opt("", "JSONL field / CSV column holding the text of .jsonl/.csv/.tsv corpora; '': auto")
    clean: str = _opt("", "comma-separated cleaning steps: html, nfkc, whitespace, lowercase, dedupe")
    stopwords: str = _opt("", "stop words removed from classification text: en, zh, en,zh or a file path")
    min_count: int = _opt(1, "word/jieba tokenizers: minimum count of a vocabulary word", bounds=">= 1")
    sp_model: str = _choice("unigram", ["unigram", "bpe"], "sentencepiece tokenizer: model type")
    special_tokens: str = _opt("", "comma-separated user special tokens (never split), after <pad>,<unk>,<bos>,<eos>")
    add_bos: bool = _opt(False, "put <bos> before each document (<eos> always follows it)")
    cache: bool = _opt(True, "cache token ids on disk, keyed by corpus hash + tokenizer hash")
    cache_dir: str = _opt("", "token cache folder; '': $KERASLLM_CACHE_DIR or ~/.keras/kerasllm/cache")
    augment_delete: float = _opt(0.0, "classification augmentation: random word deletion rate", bounds="[0, 1]")
    augment_swap: float = _opt(0.0, "classification augmentation: random word swap rate", bounds="[0, 1]")
    augment_insert: float = _opt(0.0, "classification augmentation: random word insertion rate", bounds="[0, 1]")
    augment_synonym: float = _opt(0.0, "classification augmentation: synonym substitution rate", bounds="[0, 1]")
    synonyms: str = _opt("", "synonym table for augmentation: a file of 'word<TAB>syn1,syn2' lines")
    num_proc: int = _opt(0, "cores preparing the token store: worker processes tokenizing shards in parallel "
                         "(1: this process alone, on one core); 0: the number of CPU cores")
    tokenizer_sample: int = _opt(
        100, "MB of text, sampled with data.seed across the whole corpus, that trained tokenizers learn from; 0: all"
    )
    on_error: str = _choice("raise", ["raise", "skip"], "a bad file or row: stop with an error, or skip and count it")
    shard_mb: float = _opt(16.0, "MB of text per token-store shard (the unit of parallel work and of resuming)")
    sources: list = field(default_factory=list, metadata={"help": (
        "a mixture: [[data.sources]] tables {dataset, weight, text_field}, each its own store, sampled by "
        "weight (leave data.dataset unset); --set data.sources[I].KEY=VALUE, or data.sources=[{...}, ...]"
    )})


@dataclass
class TrainConfig(_Section):
    """Optimizer, schedule, evaluation and checkpointing."""

    batch_size: int = _opt(12, "global batch size in sequences", bounds=">= 1")
    max_steps: int = _opt(2000, "optimizer steps", bounds=">= 1")
    learning_rate: float = _opt(1e-3, "peak learning rate", bounds="> 0")
    min_lr: float = _opt(1e-4, "learning rate at the end of the cosine decay", bounds=">= 0")
    warmup_steps: int = _opt(100, "linear warmup steps (a longer warmup ends at the decay end)", bounds=">= 0")
    lr_decay_steps: int = _opt(0, "cosine/linear: step at which the decay ends (nanoGPT's lr_decay_iters); exponential: its period; 0: max_steps", bounds=">= 0")
    weight_decay: float = _opt(0.1, "AdamW decoupled weight decay (>=2-D kernels only)", bounds=">= 0")
    decay_embeddings: bool = _opt(False, "also decay embedding tables (nanoGPT does)")
    beta1: float = _opt(0.9, "Adam beta_1", bounds="[0, 1)")
    beta2: float = _opt(0.99, "Adam beta_2", bounds="[0, 1)")
    epsilon: float = _opt(1e-8, "Adam epsilon (PyTorch's and nanoGPT's 1e-8; Keras' own default is 1e-7)", bounds="> 0")
    grad_clip: float = _opt(1.0, "clip gradients by global norm; 0: off", bounds=">= 0")
    eval_interval: int = _opt(250, "steps between validation passes (one Keras epoch)", bounds=">= 1")
    eval_steps: int = _opt(20, "validation batches per pass", bounds=">= 1")
    checkpoint_every: int = _opt(0, "steps between checkpoints; 0: eval_interval", bounds=">= 0")
    keep_checkpoints: int = _opt(2, "how many of the latest checkpoints to keep", bounds=">= 1")
    seed: int = _opt(1337, "seed of weight init and dropout", bounds=">= 0")
    jit_compile: bool = _opt(True, "XLA-compile the train step")
    steps_per_execution: int = _opt(
        1, "train steps per compiled call, at most (lowered to divide max_steps, eval_interval and checkpoint_every)",
        bounds=">= 1")
    log_every: int = _opt(0, "TensorBoard scalar interval in steps; 0: once per eval", bounds=">= 0")
    optimizer: str = _choice("adamw", ["adamw", "adam", "sgd"], "optimizer (AdamW decays >=2-D kernels only)")
    momentum: float = _opt(0.9, "SGD momentum; 0: plain SGD", bounds="[0, 1)")
    nesterov: bool = _opt(False, "SGD with Nesterov momentum")
    schedule: str = _choice(
        "cosine", ["cosine", "linear", "exponential", "constant", "plateau"],
        "learning-rate schedule after warmup; plateau: constant, cut by plateau_factor when val loss stalls",
    )
    decay_rate: float = _opt(0.5, "exponential schedule: the rate is multiplied by this every lr_decay_steps", bounds="(0, 1]")
    plateau_factor: float = _opt(0.5, "plateau schedule: factor applied to the rate when val loss stalls", bounds="(0, 1)")
    plateau_patience: int = _opt(2, "plateau schedule: evaluations without improvement before a cut", bounds=">= 0")
    early_stop_patience: int = _opt(0, "stop after this many evaluations without val loss improvement; 0: off", bounds=">= 0")
    l1: float = _opt(0.0, "L1 penalty on >=2-D kernels (added to the loss)", bounds=">= 0")
    l2: float = _opt(0.0, "L2 penalty on >=2-D kernels (added to the loss)", bounds=">= 0")
    grad_accum_steps: int = _opt(1, "micro-batches per optimizer step; batch_size is split across them", bounds=">= 1")
    precision: str = _choice(
        "auto", ["auto", "float32", "mixed_float16", "mixed_bfloat16"],
        "auto: mixed_float16 on GPU, mixed_bfloat16 on TPU, float32 on CPU",
    )
    strategy: str = _choice(
        "auto", ["auto", "default", "one_device", "mirrored", "multi_worker", "tpu"],
        "tf.distribute strategy (JAX: keras.distribution); auto: tpu > multi_worker (TF_CONFIG) > mirrored (>1 GPU) > default",
    )
    model_parallel: int = _opt(
        1, "JAX backend: devices on the 'model' mesh axis (tensor parallel); plan.layout picks the sharding",
        bounds=">= 1",
    )
    keep_best: bool = _opt(True, "also keep checkpoints/best.keras, the checkpoint with the lowest val loss")
    peak_flops: float = _opt(0.0, "peak FLOP/s of the whole accelerator set for MFU; 0: measured once on CPU, else off", bounds=">= 0")


@dataclass
class SampleConfig(_Section):
    """The text sample printed at the end of a run."""

    prompt: str = _opt("\n", "text the sample starts from")
    max_new_tokens: int = _opt(300, "tokens to generate", bounds=">= 0")
    temperature: float = _opt(0.8, "softmax temperature; 0: greedy", bounds=">= 0")
    top_k: int = _opt(40, "sample among the k most likely tokens; 0: all", bounds=">= 0")
    seed: int = _opt(1337, "sampling seed", bounds=">= 0")


@dataclass
class FinetuneConfig(_Section):
    """Fine-tuning a pretrained run: a classifier head or prompt -> response (SFT)."""

    task: str = _choice("classify", ["classify", "sft"], "classify: text -> label; sft: prompt -> response")
    text_column: str = _opt("", "column (or JSONL field) holding the text; '': auto-detect")
    label_column: str = _opt("", "column (or JSONL field) holding the label; '': auto-detect")
    prompt_field: str = _opt("prompt", "JSONL field holding the prompt (sft)")
    response_field: str = _opt("response", "JSONL field holding the response (sft)")
    max_length: int = _opt(0, "tokens per example (longer ones are truncated); 0: model.block_size", bounds=">= 0")
    freeze_blocks: int = _opt(0, "freeze the embeddings and the bottom N blocks / LSTM layers; -1: all", bounds=">= -1")
    drop_blocks: int = _opt(0, "remove the top K blocks / LSTM layers of the pretrained model", bounds=">= 0")
    add_dense: int = _opt(0, "new Dense+GELU layers (model width) between pooling and the output layer", bounds=">= 0")
    pooling: str = _choice("last", ["last", "mean"], "last non-pad token, or the mean over non-pad tokens")
    head_dropout: float = _opt(0.1, "dropout before each head layer", bounds="[0, 1)")
    lora_rank: int = _opt(0, "LoRA rank on the target Dense layers (backbone frozen); 0: full fine-tuning", bounds=">= 0")
    lora_alpha: float = _opt(0.0, "LoRA scale numerator: updates are scaled by alpha/rank; 0: alpha = rank", bounds=">= 0")
    lora_targets: str = _opt("*/attn/qkv,*/attn/proj", "comma-separated glob patterns of Dense layer paths for LoRA")
    class_weights: str = _opt("", "'balanced', or comma-separated label:weight pairs; '': none")
    val_data: str = _opt("", "validation file (--val); '': hold out finetune.val_fraction of the training file")
    test_data: str = _opt("", "test file scored once at the end (--test); '': none")
    val_fraction: float = _opt(0.1, "share of the training file held out when no --val file is given", bounds="(0, 1)")
    epochs: int = _opt(3, "passes over the training examples (classify); train.max_steps caps the steps", bounds=">= 1")
    from_scratch: bool = _opt(False, "re-initialize the pretrained weights (baseline with the same architecture)")
    select: str = _choice(
        "auto", ["auto", "val_accuracy", "val_loss", "last"],
        "weights kept: the best validation pass (restored at the end) or the last; auto: val_accuracy (classify), "
        "val_loss (sft)",
    )
    patience: int = _opt(3, "stop after this many validation passes without improving finetune.select; 0: never early")
    size_defaults: bool = _opt(
        True, "with train.max_steps at its default: epochs, peak rate, warmup, min_lr and eval_interval still at "
        "their defaults follow from the number of training examples (README: fine-tuning)",
    )


@dataclass
class PlanConfig(_Section):
    """The launch plan of a recipe, read by `python -m kerasllm.recipes.plan --recipe NAME`.

    `layout` and `remat = "on"` also shape training (`kerasllm.training.pretrain`); `"auto"` is
    the planner's recommendation at planning time only.
    """

    devices: str = _opt("1xCPU", "COUNTxNAME of the accelerators: 8xH100, 64xA100, 256xv5p, 1xCPU")
    tokens: str = _opt("", "training tokens (10B, 1T); '': train.max_steps x batch_size x block_size")
    mfu: float = _opt(0.0, "assumed model FLOPs utilization; 0: the hardware's default (0.4, CPU measured)", bounds="[0, 1]")
    layout: str = _choice(
        "auto", ["auto", "data", "fsdp", "tensor", "fsdp+tensor"],
        "weight sharding, planned and used in training (fsdp, tensor, fsdp+tensor need KERAS_BACKEND=jax): "
        "data replicates, fsdp splits every matrix over all devices, tensor over train.model_parallel "
        "(> 1) devices, fsdp+tensor both; auto: the planner's choice when planning, in training "
        "fsdp+tensor if train.model_parallel > 1 else data",
    )
    micro_batch: int = _opt(0, "sequences per device per pass; 0: the largest that fits", bounds=">= 0")
    remat: str = _choice(
        "auto", ["auto", "on", "off"],
        "rematerialize each GPT decoder block in the backward pass; on: in training too (needs "
        "model.dropout = 0); auto: the planner decides when planning, training runs without",
    )
    flash_attention: str = _choice("auto", ["auto", "on", "off"], "fused attention (no T x T scores); auto: off on CPU")


@dataclass
class ExportConfig(_Section):
    """The serving SavedModel written by `python -m kerasllm.recipes.export`."""

    max_new_tokens: int = _opt(256, "cap on generate's max_new_tokens (a GPT's is also block_size - 1)", bounds=">= 1")
    truncate: str = _choice(
        "left", ["left", "error"], "GPT prompts that do not fit the context: drop the oldest tokens, or reject"
    )
    score_stride: int = _opt(0, "step of score's sliding window (as the evaluate recipe); 0: block_size // 2", bounds=">= 0")


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "finetune": FinetuneConfig,
    "plan": PlanConfig,
    "export": ExportConfig,
}
_SECTION_NAMES = {cls: name for name, cls in SECTIONS.items()}
SOURCES_KEY = "data.sources"
_SOURCE_ENTRY_KEY = re.compile(r"^data\.sources\[(\d+)\]\.(\w+)$")
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _table_problems(name, section):
    """`(key, message)` for each value of table `name` outside its choices or range, entries of
    `data.sources` included."""
    for f in dataclasses.fields(section):
        key = f"{name}.{f.name}"
        if key == SOURCES_KEY:
            yield from _sources_problems(section.sources)
            continue
        problem = _value_problem(key, f, getattr(section, f.name))
        if problem:
            yield key, problem


def _sources_problems(sources):
    seen = {}
    for index, entry in enumerate(sources):
        key = f"{SOURCES_KEY}[{index}]"
        if not isinstance(entry, SourceConfig):
            yield key, f"{key} = {entry!r}: expected a kerasllm.config.SourceConfig"
            continue
        yield from entry.problems(key)
        spec = (entry.dataset, entry.text_field)
        if spec in seen:
            yield f"{key}.dataset", (f"{key}.dataset = {entry.dataset!r} repeats {SOURCES_KEY}[{seen[spec]}]: "
                                     "list each corpus once and give it the sum of the weights")
        seen.setdefault(spec, index)


def _value_problem(key, f, value):
    """The message for `value` outside the choices or bounds in field `f`'s metadata, else None."""
    choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
    if choices and value not in choices:
        return f"{key} = {value!r} is not one of {', '.join(map(repr, choices))}"
    if bounds is None or (bounds.contains(value) and math.isfinite(value)):
        return None
    kind = "an integer" if isinstance(value, int) else "a finite number" if bounds.high == math.inf else "a number"
    return f"{key} = {value!r} is out of range; expected {kind} {bounds}"


def check_value(key, value):
    """Raises `ConfigError` unless `value` is within key's (`"section.key"`) choices and range.

    For functions that take one setting as a plain argument (`resolve_placement`), so the
    rule stays the field's.

    Examples:

    >>> check_value("train.model_parallel", 2)
    2
    >>> check_value("model.dropout", 1.5)
    Traceback (most recent call last):
        ...
    kerasllm.errors.ConfigError: model.dropout = 1.5 is out of range; expected a number in [0, 1)
    """
    section_name, _, name = key.partition(".")
    problem = _value_problem(key, SECTIONS[section_name].__dataclass_fields__[name], value)
    if problem:
        raise ConfigError(problem)
    return value


def choices_of(key):
    """The choices of a `"section.key"` field, e.g. `choices_of("train.strategy")`."""
    section_name, _, name = key.partition(".")
    return SECTIONS[section_name].__dataclass_fields__[name].metadata["choices"]


# --- cross-key rules ---------------------------------------------------------------------------
# Each rule reads the keys it is registered with and returns a message naming them, or None.
# It receives the tables those keys live in, in order of first mention. Ranges are checked
# before any rule runs, so a rule may divide by a count.
_RULES = []


def _rule(*keys):
    def register(check):
        sections = tuple(dict.fromkeys(key.partition(".")[0] for key in keys))
        _RULES.append((keys, sections, check))
        return check

    return register


@_rule("model.n_embd", "model.n_head", "model.arch")
def _heads_split_the_width(model):
    if model.arch == "gpt" and not model.head_dim and model.n_embd % model.n_head:
        return f"model.n_embd = {model.n_embd} must be divisible by model.n_head = {model.n_head}"


@_rule("model.n_head", "model.n_kv_head", "model.arch")
def _kv_heads_group_the_heads(model):
    if model.arch == "gpt" and model.n_kv_head and model.n_head % model.n_kv_head:
        return f"model.n_head = {model.n_head} must be a multiple of model.n_kv_head = {model.n_kv_head}"


@_rule("model.positions", "model.n_embd", "model.n_head", "model.head_dim", "model.arch")
def _rope_needs_even_heads(model):
    head_size = model.head_dim or model.n_embd // model.n_head
    if model.arch == "gpt" and model.positions == "rope" and head_size % 2:
        source = "model.head_dim" if model.head_dim else f"model.n_embd / model.n_head = {model.n_embd} / {model.n_head}"
        return f"model.positions = 'rope' needs an even head size, got {head_size} ({source})"


# GPT features an LSTM would silently ignore. Plain sizes (n_head, bias, norm_eps, ...) are left
# out: a GPT recipe run with `--set model.arch=lstm` keeps them, harmlessly.
GPT_FEATURES = ("n_kv_head", "mlp_hidden", "positions", "norm", "mlp", "qkv_bias", "head_dim", "qk_norm",
                "rope_scaling", "scale_embeddings")


def _gpt_feature_rule(key):
    @_rule(f"model.{key}", "model.arch")
    def check(model):
        value, default = getattr(model, key), ModelConfig.__dataclass_fields__[key].default
        if model.arch != "gpt" and value != default:
            return (f"model.{key} = {value!r} is a GPT option that model.arch = {model.arch!r} does not "
                    f"use: leave it at {default!r} or use model.arch = 'gpt'")


for _key in GPT_FEATURES:
    _gpt_feature_rule(_key)


@_rule("train.min_lr", "train.learning_rate")
def _min_lr_below_peak(train):
    if train.min_lr > train.learning_rate:
        return f"train.min_lr = {train.min_lr}: expected 0 <= min_lr <= train.learning_rate = {train.learning_rate}"


@_rule("train.batch_size", "train.grad_accum_steps")
def _batch_splits_into_micro_batches(train):
    if train.batch_size % train.grad_accum_steps:
        return (f"train.batch_size = {train.batch_size} must be a multiple of train.grad_accum_steps = "
                f"{train.grad_accum_steps} (each optimizer step averages that many equal micro-batches)")


@_rule("train.steps_per_execution", "train.grad_accum_steps")
def _steps_per_execution_counts_batches(train):
    # (Other step counts need not be multiples: `StepPlan` lowers it to a common divisor.)
    if train.steps_per_execution != 1 and train.grad_accum_steps > 1:
        return (f"train.steps_per_execution = {train.steps_per_execution}: use 1 with "
                "train.grad_accum_steps > 1 (it counts single batches)")


def remat_problem(model_config):
    """Why `plan.remat = "on"` cannot apply to the model `model_config` describes, or None."""
    if model_config.arch != "gpt":
        return (f"plan.remat = 'on' rematerializes GPT decoder blocks; model.arch = {model_config.arch!r} "
                "has none: use plan.remat = 'off' (or 'auto')")
    if model_config.dropout:
        # The recomputation would draw a new dropout mask (TensorFlow: wrong gradients) or leak
        # the RNG state out of jax.checkpoint (JAX: UnexpectedTracerError).
        return (f"plan.remat = 'on' needs model.dropout = 0 (got {model_config.dropout}): a "
                "rematerialized block cannot replay its dropout mask in the backward pass")
    return None


@_rule("plan.remat", "model.arch", "model.dropout")
def _remat_fits_the_model(plan, model):
    return remat_problem(model) if plan.remat == "on" else None


def layout_problem(layout, model_parallel, strategy="auto"):
    """Why `plan.layout` contradicts `train.model_parallel` or `train.strategy`, or None."""
    if layout in ("data", "fsdp") and model_parallel > 1:
        return (f"plan.layout = {layout!r} has no model axis, but train.model_parallel = {model_parallel}: "
                "use train.model_parallel = 1, or plan.layout = 'tensor', 'fsdp+tensor' or 'auto'")
    if layout in ("tensor", "fsdp+tensor") and model_parallel == 1:
        return (f"plan.layout = {layout!r} needs train.model_parallel > 1 (the size of the tensor-parallel "
                "axis) and the JAX backend (KERAS_BACKEND=jax); got train.model_parallel = 1")
    if layout not in ("auto", "data") and strategy in ("default", "one_device"):
        return (f"plan.layout = {layout!r} shards over all devices, but train.strategy = {strategy!r} "
                "uses one: use train.strategy = 'auto'")
    return None


@_rule("plan.layout", "train.model_parallel", "train.strategy")
def _layout_fits_the_mesh(plan, train):
    return layout_problem(plan.layout, train.model_parallel, train.strategy)


@dataclass
class Config:
    """A whole run: `name` plus one dataclass per TOML table."""

    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self):
        # "section.key" -> (where it was set, the value set there), in the order set: an error
        # names the file or `--set` behind a key only while the key still holds that value.
        self._sources = {}

    def replace(self, **sections):
        """A copy with some sections (or `name`) replaced, remembering where each key was set
        (`dataclasses.replace` would forget it).

        Examples:

        >>> config = load_config("default", ["train.max_steps=10"])
        >>> copy = config.replace(model=dataclasses.replace(config.model, n_layer=2))
        >>> copy.model.n_layer, copy.source_of("train.max_steps")
        (2, '--set train.max_steps=10')
        """
        copy = dataclasses.replace(self, **sections)
        copy._sources = dict(self._sources)
        return copy

    @classmethod
    def from_dict(cls, values, source="config", validate=True):
        """Builds a config from nested dicts, checking every key and type against `source`.

        `validate=False` leaves the cross-key rules to a later `validate()` (after overrides).
        """
        config = cls()
        for key, value in values.items():
            if key == "name":
                config.name = _coerce(source, "name", str, value)
            elif key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: [{key}] must be a table, got {value!r}")
                for sub_key, sub_value in value.items():
                    config.set(f"{key}.{sub_key}", sub_value, source=source)
            else:
                raise ConfigError(
                    f"{source}: unknown key '{key}'; expected 'name' or one of the tables "
                    f"{', '.join('[' + s + ']' for s in SECTIONS)}"
                )
        return config.validate() if validate else config

    def set(self, dotted_key, value, source="--set"):
        """Sets `section.key` (or `data.sources[I].key`) to `value` (already parsed), checking
        the key and the type."""
        section_name, _, key = dotted_key.partition(".")
        if dotted_key == "name":
            self.name = _coerce(source, "name", str, value)
            return
        if dotted_key == SOURCES_KEY:
            self._set_sources(value, source)
            return
        if dotted_key.startswith(SOURCES_KEY + "["):
            self._set_source_entry(dotted_key, value, source)
            return
        if section_name not in SECTIONS or not key:
            raise ConfigError(
                f"{source}: unknown key '{dotted_key}'; expected 'name' or SECTION.KEY with "
                f"SECTION one of {', '.join(SECTIONS)}"
            )
        section = getattr(self, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown key '{dotted_key}'; [{section_name}] has keys: "
                f"{', '.join(fields)}"
            )
        hints = typing.get_type_hints(type(section))
        value = _coerce(source, dotted_key, hints[key], value)
        problem = _value_problem(dotted_key, fields[key], value)
        if problem:
            raise ConfigError(f"{source}: {problem}")
        setattr(section, key, value)
        self._sources.pop(dotted_key, None)
        self._sources[dotted_key] = (source, value)

    def _set_sources(self, value, source):
        """`data.sources` as a whole: a list of tables (TOML `[[data.sources]]` or inline)."""
        if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
            raise ConfigError(
                f"{source}: {SOURCES_KEY} must be an array of tables ([[data.sources]] in a file, "
                f"[{{dataset = \"...\", weight = 1.0}}, ...] with --set), got {value!r}"
            )
        for stale in [k for k in self._sources if k == SOURCES_KEY or k.startswith(SOURCES_KEY + "[")]:
            del self._sources[stale]
        self.data.sources = []
        for index, entry in enumerate(value):
            self.data.sources.append(SourceConfig())
            for key, item in entry.items():
                self._set_source_entry(f"{SOURCES_KEY}[{index}].{key}", item, source)
        self._sources[SOURCES_KEY] = (source, copy.deepcopy(self.data.sources))

    def _set_source_entry(self, dotted_key, value, source):
        """`data.sources[I].KEY`: of an existing entry, or of a new one when I is one past the last."""
        match = _SOURCE_ENTRY_KEY.match(dotted_key)
        fields = {f.name: f for f in dataclasses.fields(SourceConfig)}
        if match is None:
            raise ConfigError(f"{source}: unknown key '{dotted_key}'; expected {SOURCES_KEY}[INDEX].KEY with "
                              f"KEY one of {', '.join(fields)}, e.g. {SOURCES_KEY}[0].weight")
        index, key = int(match.group(1)), match.group(2)
        sources = self.data.sources
        if index > len(sources):
            raise ConfigError(f"{source}: {dotted_key}: there are {len(sources)} sources, "
                              f"{SOURCES_KEY}[0] to [{len(sources) - 1}]; index {len(sources)} adds one")
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{dotted_key}'; a [[data.sources]] table has keys: "
                              f"{', '.join(fields)}")
        value = _coerce(source, dotted_key, typing.get_type_hints(SourceConfig)[key], value)
        problem = _value_problem(dotted_key, fields[key], value)
        if problem:
            raise ConfigError(f"{source}: {problem}")
        if index == len(sources):
            sources.append(SourceConfig())
        setattr(sources[index], key, value)
        self._sources.pop(dotted_key, None)
        self._sources[dotted_key] = (source, value)

    def validate(self):
        """Checks every key's choices and range and every rule across keys; returns the config.

        Raises:
            ConfigError: one line naming the key at fault, what was expected and where the
                value came from (the recipe file or the `--set` that set it).

        Examples:

        >>> config = load_config("default", ["model.n_head=3"])
        Traceback (most recent call last):
            ...
        kerasllm.errors.ConfigError: --set model.n_head=3: model.n_embd = 128 must be divisible by model.n_head = 3
        """
        for section_name in SECTIONS:
            for key, problem in _table_problems(section_name, getattr(self, section_name)):
                raise ConfigError(self._where_entry(key) + problem)
        default_dataset = DataConfig.__dataclass_fields__["dataset"].default
        if self.data.sources and self.data.dataset != default_dataset:
            raise ConfigError(
                self._where("data.dataset", SOURCES_KEY)
                + f"data.dataset = {self.data.dataset!r} and {len(self.data.sources)} [[data.sources]] are both "
                "set: a mixture reads only its sources; add it as a source, or drop the sources "
                "(--set data.sources=[])"
            )
        for keys, sections, check in _RULES:
            problem = check(*(getattr(self, name) for name in sections))
            if problem:
                raise ConfigError(self._where(*keys) + problem)
        return self

    def source_of(self, key):
        """The file or `--set` that set `key` ("section.key", "data.sources[I].key") to its
        current value, or None."""
        source, value = self._sources.get(key, (None, None))
        if source is None or self._current(key) != value:
            return None
        return source

    def _current(self, key):
        match = _SOURCE_ENTRY_KEY.match(key)
        if match is not None:
            index = int(match.group(1))
            return getattr(self.data.sources[index], match.group(2)) if index < len(self.data.sources) else None
        section_name, _, name = key.partition(".")
        return getattr(getattr(self, section_name), name)

    def _where_entry(self, key):
        """`_where(key)`, or for a key of a `data.sources` entry that nothing set (a missing
        dataset), where the entry's other keys came from."""
        entry = key.rpartition(".")[0] + "." if _SOURCE_ENTRY_KEY.match(key) else None
        if self._where(key) or entry is None:
            return self._where(key)
        return self._where(*[k for k in self._sources if k.startswith(entry)])

    def _where(self, *keys):
        """`"SOURCE: "` of the key among `keys` set last, or "" when none was set from outside
        or one was changed since (in Python: no file or `--set` is to blame)."""
        set_keys = [key for key in self._sources if key in keys]
        if not set_keys or not all(self.source_of(key) for key in set_keys):
            return ""
        return f"{self.source_of(set_keys[-1])}: "

    def override(self, assignment):
        """Applies one `section.key=value` string; the value is read as a TOML value."""
        if "=" not in assignment:
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. model.n_layer=6")
        key, _, raw = assignment.partition("=")
        self.set(key.strip(), _parse_value(raw.strip()), source=f"--set {assignment}")

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_toml(self):
        """The resolved config as TOML text (loads back to an equal `Config`)."""
        lines = [f"name = {_toml_value(self.name)}"]
        for section_name in SECTIONS:
            lines.append("")
            lines.append(f"[{section_name}]")
            values = dataclasses.asdict(getattr(self, section_name))
            entries = values.pop("sources", [])
            for key, value in values.items():
                lines.append(f"{key} = {_toml_value(value)}")
            for entry in entries:  # [[data.sources]] after the [data] keys they belong to
                lines.extend(["", f"[[{SOURCES_KEY}]]"])
                lines.extend(f"{key} = {_toml_value(value)}" for key, value in entry.items())
        return "\n".join(lines) + "\n"

    def save(self, path):
        Path(path).write_text(self.to_toml(), encoding="utf-8")


def _parse_value(raw):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # bare words are strings: --set data.dataset=tinyshakespeare


def _coerce(source, key, expected, value):
    if expected is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and source.startswith("--set"):
            return source.partition("=")[2].strip()  # --set data.dataset=2024 means the string
    elif expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    raise ConfigError(
        f"{source}: {key} = {value!r} has the wrong type; expected {_TYPE_NAMES[expected]} "
        f"({expected.__name__})"
    )


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        .replace("\r", "\\r")
    )
    return f'"{escaped}"'


def recipe_dirs():
    """Folders searched for recipe names, in order."""
    dirs = []
    if os.environ.get("KERASLLM_RECIPES"):
        dirs.append(Path(os.environ["KERASLLM_RECIPES"]))
    dirs.append(Path(__file__).resolve().parent.parent / "recipes")  # source checkout
    dirs.append(Path(sys.prefix) / "share" / "kerasllm" / "recipes")  # wheel install
    return dirs


def find_recipe(name_or_path):
    """Resolves a recipe file path or a name of a file in `recipes/`."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    if path.suffix == ".toml" and (len(path.parts) > 1 or path.is_absolute()):
        raise ConfigError(f"--recipe {name_or_path}: no such file")
    stem = path.stem if path.suffix == ".toml" else str(name_or_path)
    for folder in recipe_dirs():
        candidate = folder / f"{stem}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in recipe_dirs() if d.is_dir() for p in d.glob("*.toml")})
    raise ConfigError(
        f"--recipe {name_or_path}: not a file and not a recipe name; known recipes: "
        f"{', '.join(known) or '(none found)'}"
    )


def load_config(recipe="default", overrides=()):
    """Loads a recipe (name or path), applies `--set` style overrides and validates the result.

    Every key's type and range and every rule across keys (`Config.validate`) are checked here,
    before any data is read: a mistake is one `ConfigError` naming the key and the file or the
    `--set` it came from.

    Args:
        recipe: a path to a TOML file, or the name of a file in `recipes/`.
        overrides: strings `section.key=value`.

    Returns:
        A validated `Config`.

    Raises:
        ConfigError: an unknown recipe or key, a wrong type, a value out of range or a broken
            rule across keys.

    Examples:

    >>> config = load_config("default", ["train.max_steps=10"])
    >>> config.train.max_steps
    10
    """
    path = find_recipe(recipe)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    config = Config.from_dict(values, source=str(path), validate=False)
    for assignment in overrides:
        config.override(assignment)
    return config.validate()


def describe_keys():
    """One help line per config key, for `--help`."""
    lines = []
    for section_name, section_cls in SECTIONS.items():
        for f in dataclasses.fields(section_cls):
            if f"{section_name}.{f.name}" == SOURCES_KEY:
                lines.append(f"  {SOURCES_KEY} (array of tables, default []): {f.metadata['help']}")
                lines.extend(_key_line(f"{SOURCES_KEY}[I]", SourceConfig, g) for g in dataclasses.fields(SourceConfig))
                continue
            lines.append(_key_line(section_name, section_cls, f))
    return "\n".join(lines)


def _key_line(prefix, cls, f):
    choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
    kind = " | ".join(choices) if choices else typing.get_type_hints(cls)[f.name].__name__
    if bounds is not None:
        kind += f" {bounds}"
    return f"  {prefix}.{f.name} ({kind}, default {f.default!r}): {f.metadata.get('help', '')}"
