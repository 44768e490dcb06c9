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
the file (or `--set`), the key and the expected type.
"""

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from kerasllm.errors import ConfigError


def _choice(default, choices, help=""):
    return field(default=default, metadata={"choices": tuple(choices), "help": help})


def _opt(default, help=""):
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    """Architecture of the language model (GPT decoder or LSTM baseline)."""

    arch: str = _choice("gpt", ["gpt", "lstm"], "model family")
    vocab_size: int = _opt(0, "0: the tokenizer's vocabulary size")
    block_size: int = _opt(128, "context length in tokens")
    n_layer: int = _opt(4, "decoder blocks (GPT) or stacked LSTM layers")
    n_head: int = _opt(4, "attention heads")
    n_kv_head: int = _opt(0, "key/value heads; 0: n_head (multi-head), fewer: grouped-query")
    n_embd: int = _opt(128, "embedding / residual width")
    mlp_hidden: int = _opt(0, "MLP hidden width; 0: 4*n_embd (gelu) or 8/3*n_embd rounded (swiglu)")
    dropout: float = _opt(0.0, "dropout rate on embeddings, residual branches and LSTM outputs")
    bias: bool = _opt(True, "biases in Dense and LayerNorm layers")
    tie_embeddings: bool = _opt(True, "share the token embedding with the output head")
    positions: str = _choice("learned", ["learned", "rope"], "position encoding")
    norm: str = _choice("layernorm", ["layernorm", "rmsnorm"], "normalization layer")
    mlp: str = _choice("gelu", ["gelu", "swiglu"], "MLP kind")
    norm_eps: float = _opt(1e-5, "epsilon of the normalization layers")
    rope_theta: float = _opt(10000.0, "RoPE base wavelength")
    hidden_size: int = _opt(0, "LSTM hidden units; 0: n_embd")


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token windows."""

    dataset: str = _opt(
        "python-stdlib", "registered dataset name, text file, directory or glob"
    )
    tokenizer: str = _opt("char", "tokenizer kind (see kerasllm.tokenizers)")
    vocab_size: int = _opt(0, "target vocabulary size for trained tokenizers; 0: the kind's default")
    val_fraction: float = _opt(0.1, "share of the corpus held out for validation")
    split: str = _choice("position", ["position", "document"], "how the validation split is cut")
    stride: int = _opt(0, "step between training windows; 0: block_size (no overlap)")
    seed: int = _opt(1337, "seed of the document split and the shuffle order")
    text_field: str = _opt("", "JSONL field / CSV column holding the text of .jsonl/.csv/.tsv corpora; '': auto")
    clean: str = _opt("", "comma-separated cleaning steps: html, nfkc, whitespace, lowercase, dedupe")
    stopwords: str = _opt("", "stop words removed from classification text: en, zh, en,zh or a file path")
    min_count: int = _opt(1, "word/jieba tokenizers: minimum count of a vocabulary word")
    sp_model: str = _choice("unigram", ["unigram", "bpe"], "sentencepiece tokenizer: model type")
    special_tokens: str = _opt("", "comma-separated user special tokens (never split), after <pad>,<unk>,<bos>,<eos>")
    add_bos: bool = _opt(False, "put <bos> before each document (<eos> always follows it)")
    cache: bool = _opt(True, "cache token ids on disk, keyed by corpus hash + tokenizer hash")
    cache_dir: str = _opt("", "token cache folder; '': $KERASLLM_CACHE_DIR or ~/.keras/kerasllm/cache")
    augment_delete: float = _opt(0.0, "classification augmentation: random word deletion rate")
    augment_swap: float = _opt(0.0, "classification augmentation: random word swap rate")
    augment_insert: float = _opt(0.0, "classification augmentation: random word insertion rate")
    augment_synonym: float = _opt(0.0, "classification augmentation: synonym substitution rate")
    synonyms: str = _opt("", "synonym table for augmentation: a file of 'word<TAB>syn1,syn2' lines")


@dataclass
class TrainConfig:
    """Optimizer, schedule, evaluation and checkpointing."""

    batch_size: int = _opt(12, "global batch size in sequences")
    max_steps: int = _opt(2000, "optimizer steps")
    learning_rate: float = _opt(1e-3, "peak learning rate")
    min_lr: float = _opt(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _opt(100, "linear warmup steps")
    lr_decay_steps: int = _opt(0, "steps of the cosine decay after warmup ends; 0: max_steps")
    weight_decay: float = _opt(0.1, "AdamW decoupled weight decay (>=2-D kernels only)")
    decay_embeddings: bool = _opt(False, "also decay embedding tables (nanoGPT does)")
    beta1: float = _opt(0.9, "Adam beta_1")
    beta2: float = _opt(0.99, "Adam beta_2")
    epsilon: float = _opt(1e-8, "Adam epsilon (PyTorch's and nanoGPT's 1e-8; Keras' own default is 1e-7)")
    grad_clip: float = _opt(1.0, "clip gradients by global norm; 0: off")
    eval_interval: int = _opt(250, "steps between validation passes (one Keras epoch)")
    eval_steps: int = _opt(20, "validation batches per pass")
    checkpoint_every: int = _opt(0, "steps between checkpoints; 0: eval_interval")
    keep_checkpoints: int = _opt(2, "how many of the latest checkpoints to keep")
    seed: int = _opt(1337, "seed of weight init and dropout")
    jit_compile: bool = _opt(True, "XLA-compile the train step")
    steps_per_execution: int = _opt(1, "train steps per compiled call")
    log_every: int = _opt(0, "TensorBoard scalar interval in steps; 0: once per eval")
    optimizer: str = _choice("adamw", ["adamw", "adam", "sgd"], "optimizer (AdamW decays >=2-D kernels only)")
    momentum: float = _opt(0.9, "SGD momentum; 0: plain SGD")
    nesterov: bool = _opt(False, "SGD with Nesterov momentum")
    schedule: str = _choice(
        "cosine", ["cosine", "linear", "exponential", "constant", "plateau"],
        "learning-rate schedule after warmup; plateau: constant, cut by plateau_factor when val loss stalls",
    )
    decay_rate: float = _opt(0.5, "exponential schedule: the rate is multiplied by this every lr_decay_steps")
    plateau_factor: float = _opt(0.5, "plateau schedule: factor applied to the rate when val loss stalls")
    plateau_patience: int = _opt(2, "plateau schedule: evaluations without improvement before a cut")
    early_stop_patience: int = _opt(0, "stop after this many evaluations without val loss improvement; 0: off")
    l1: float = _opt(0.0, "L1 penalty on >=2-D kernels (added to the loss)")
    l2: float = _opt(0.0, "L2 penalty on >=2-D kernels (added to the loss)")
    grad_accum_steps: int = _opt(1, "micro-batches per optimizer step; batch_size is split across them")
    precision: str = _choice(
        "auto", ["auto", "float32", "mixed_float16", "mixed_bfloat16"],
        "auto: mixed_float16 on GPU, mixed_bfloat16 on TPU, float32 on CPU",
    )
    strategy: str = _choice(
        "auto", ["auto", "default", "one_device", "mirrored", "multi_worker", "tpu"],
        "tf.distribute strategy (JAX: keras.distribution); auto: tpu > multi_worker (TF_CONFIG) > mirrored (>1 GPU) > default",
    )
    model_parallel: int = _opt(
        1, "JAX backend: devices on the 'model' mesh axis (tensor parallel); plan.layout picks the sharding"
    )
    keep_best: bool = _opt(True, "also keep checkpoints/best.keras, the checkpoint with the lowest val loss")
    peak_flops: float = _opt(0.0, "peak FLOP/s of the whole accelerator set for MFU; 0: measured once on CPU, else off")


@dataclass
class SampleConfig:
    """The text sample printed at the end of a run."""

    prompt: str = _opt("\n", "text the sample starts from")
    max_new_tokens: int = _opt(300, "tokens to generate")
    temperature: float = _opt(0.8, "softmax temperature; 0: greedy")
    top_k: int = _opt(40, "sample among the k most likely tokens; 0: all")
    seed: int = _opt(1337, "sampling seed")


@dataclass
class FinetuneConfig:
    """Fine-tuning a pretrained run: a classifier head or prompt -> response (SFT)."""

    task: str = _choice("classify", ["classify", "sft"], "classify: text -> label; sft: prompt -> response")
    text_column: str = _opt("", "column (or JSONL field) holding the text; '': auto-detect")
    label_column: str = _opt("", "column (or JSONL field) holding the label; '': auto-detect")
    prompt_field: str = _opt("prompt", "JSONL field holding the prompt (sft)")
    response_field: str = _opt("response", "JSONL field holding the response (sft)")
    max_length: int = _opt(0, "tokens per example (longer ones are truncated); 0: model.block_size")
    freeze_blocks: int = _opt(0, "freeze the embeddings and the bottom N blocks / LSTM layers; -1: all")
    drop_blocks: int = _opt(0, "remove the top K blocks / LSTM layers of the pretrained model")
    add_dense: int = _opt(0, "new Dense+GELU layers (model width) between pooling and the output layer")
    pooling: str = _choice("last", ["last", "mean"], "last non-pad token, or the mean over non-pad tokens")
    head_dropout: float = _opt(0.1, "dropout before each head layer")
    lora_rank: int = _opt(0, "LoRA rank on the target Dense layers (backbone frozen); 0: full fine-tuning")
    lora_alpha: float = _opt(0.0, "LoRA scale numerator: updates are scaled by alpha/rank; 0: alpha = rank")
    lora_targets: str = _opt("*/attn/qkv,*/attn/proj", "comma-separated glob patterns of Dense layer paths for LoRA")
    class_weights: str = _opt("", "'balanced', or comma-separated label:weight pairs; '': none")
    val_data: str = _opt("", "validation file (--val); '': hold out finetune.val_fraction of the training file")
    test_data: str = _opt("", "test file scored once at the end (--test); '': none")
    val_fraction: float = _opt(0.1, "share of the training file held out when no --val file is given")
    epochs: int = _opt(3, "passes over the training examples (classify); train.max_steps caps the steps")
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
class PlanConfig:
    """The launch plan of a recipe, read by `python -m kerasllm.recipes.plan --recipe NAME`.

    `layout` and `remat = "on"` also shape training (`kerasllm.training.pretrain`); `"auto"` is
    the planner's recommendation at planning time only.
    """

    devices: str = _opt("1xCPU", "COUNTxNAME of the accelerators: 8xH100, 64xA100, 256xv5p, 1xCPU")
    tokens: str = _opt("", "training tokens (10B, 1T); '': train.max_steps x batch_size x block_size")
    mfu: float = _opt(0.0, "assumed model FLOPs utilization; 0: the hardware's default (0.4, CPU measured)")
    layout: str = _choice(
        "auto", ["auto", "data", "fsdp", "tensor", "fsdp+tensor"],
        "weight sharding, planned and used in training (fsdp, tensor, fsdp+tensor need KERAS_BACKEND=jax): "
        "data replicates, fsdp splits every matrix over all devices, tensor over train.model_parallel "
        "(> 1) devices, fsdp+tensor both; auto: the planner's choice when planning, in training "
        "fsdp+tensor if train.model_parallel > 1 else data",
    )
    micro_batch: int = _opt(0, "sequences per device per pass; 0: the largest that fits")
    remat: str = _choice(
        "auto", ["auto", "on", "off"],
        "rematerialize each GPT decoder block in the backward pass; on: in training too (needs "
        "model.dropout = 0); auto: the planner decides when planning, training runs without",
    )
    flash_attention: str = _choice("auto", ["auto", "on", "off"], "fused attention (no T x T scores); auto: off on CPU")


@dataclass
class ExportConfig:
    """The serving SavedModel written by `python -m kerasllm.recipes.export`."""

    max_new_tokens: int = _opt(256, "cap on generate's max_new_tokens (a GPT's is also block_size - 1)")
    truncate: str = _choice(
        "left", ["left", "error"], "GPT prompts that do not fit the context: drop the oldest tokens, or reject"
    )
    score_stride: int = _opt(0, "step of score's sliding window (as the evaluate recipe); 0: block_size // 2")


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "finetune": FinetuneConfig,
    "plan": PlanConfig,
    "export": ExportConfig,
}


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

    @classmethod
    def from_dict(cls, values, source="config"):
        """Builds a config from nested dicts, checking every key and type against `source`."""
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
        return config

    def set(self, dotted_key, value, source="--set"):
        """Sets `section.key` to `value` (already parsed), checking the key and the type."""
        section_name, _, key = dotted_key.partition(".")
        if dotted_key == "name":
            self.name = _coerce(source, "name", str, value)
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
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(
                f"{source}: {dotted_key} = {value!r} is not one of {', '.join(map(repr, choices))}"
            )
        setattr(section, key, value)

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
            for key, value in dataclasses.asdict(getattr(self, section_name)).items():
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def save(self, path):
        Path(path).write_text(self.to_toml(), encoding="utf-8")


def _parse_value(raw):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # bare words are strings: --set data.dataset=tinyshakespeare


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


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
    """Loads a recipe (name or path) and applies `--set` style overrides.

    Args:
        recipe: a path to a TOML file, or the name of a file in `recipes/`.
        overrides: strings `section.key=value`.

    Returns:
        A `Config`.

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
    config = Config.from_dict(values, source=str(path))
    for assignment in overrides:
        config.override(assignment)
    return config


def describe_keys():
    """One help line per config key, for `--help`."""
    lines = []
    for section_name, section_cls in SECTIONS.items():
        for f in dataclasses.fields(section_cls):
            choices = f.metadata.get("choices")
            kind = " | ".join(choices) if choices else typing.get_type_hints(section_cls)[f.name].__name__
            lines.append(f"  {section_name}.{f.name} ({kind}, default {f.default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)
