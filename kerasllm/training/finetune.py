"""Fine-tuning a pretrained run: sequence classification and prompt -> response (SFT).

A fine-tuned run directory has the pretraining layout (`config.toml`, `tokenizer/`,
`model.keras`, `metrics.json`, `log.csv`) plus `finetune.json` (the source run, the data
files and, for classifiers, the label mapping). `load_run` opens it like any other run.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kerasllm.errors import ConfigError, DataError
from kerasllm.models import GPT, build_model
from kerasllm.models.classifier import SequenceClassifier, truncate_backbone
from kerasllm.models.lora import apply_lora, merge_lora
from kerasllm.training.rundir import save_model_atomic, write_json_atomic
from kerasllm.training.metrics import classification_report, confusion_matrix
from kerasllm.training.optimizers import build_optimizer
from kerasllm.training.rundir import RunDir, load_run

CONFIG_FILE, METRICS_FILE, MODEL_FILE, TOKENIZER_DIR = "config.toml", "metrics.json", "model.keras", "tokenizer"

FINETUNE_FILE = "finetune.json"


# --- labels ----------------------------------------------------------------------------------
def label_names(labels, source="data"):
    """The sorted distinct labels as strings (numerically sorted when all are integers).

    Raises:
        DataError: fewer than two distinct labels.

    Examples:

    >>> label_names(["10", "2", "2", 10])
    ['2', '10']
    """
    names = sorted({str(label).strip() for label in labels})
    if all(name.lstrip("-").isdigit() for name in names):
        names.sort(key=int)
    if not names:
        raise DataError(f"{source}: no labelled examples")
    if len(names) < 2:
        raise DataError(
            f"{source}: every example has the label {names[0]!r}; a classifier needs at least 2 "
            "distinct labels"
        )
    return names


def label_ids(labels, names, source="data"):
    """Maps labels to class indices of `names`; an unknown label is a `DataError`."""
    index = {name: i for i, name in enumerate(names)}
    strings = [str(label).strip() for label in labels]
    unknown = sorted(set(strings) - set(index))
    if unknown:
        raise DataError(
            f"{source}: labels {', '.join(map(repr, unknown[:5]))} are not among the model's labels "
            f"{', '.join(map(repr, names))}"
        )
    return np.array([index[s] for s in strings], dtype=np.int32)


def class_weight_dict(spec, names, y):
    """`finetune.class_weights` -> Keras `class_weight` ({index: weight}) or None."""
    spec = spec.strip()
    if not spec:
        return None
    if spec == "balanced":
        counts = np.bincount(y, minlength=len(names))
        return {i: float(len(y) / (len(names) * c)) if c else 0.0 for i, c in enumerate(counts)}
    weights = {i: 1.0 for i in range(len(names))}
    for item in spec.split(","):
        label, sep, value = item.rpartition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or weight is None or label.strip() not in names:
            raise ConfigError(
                f"finetune.class_weights = {spec!r}: expected 'balanced' or LABEL:WEIGHT pairs with "
                f"LABEL one of {', '.join(names)}"
            )
        weights[names.index(label.strip())] = weight
    return weights


# --- encoding --------------------------------------------------------------------------------
def encode_texts(tokenizer, texts, max_length):
    """Right-padded `(len(texts), max_length)` int32 ids; longer texts keep their first tokens."""
    out = np.full((len(texts), max_length), tokenizer.pad_id, dtype=np.int32)
    # One batched call: graph tokenizers (WordPiece, SentencePiece, BPE) cost milliseconds per
    # call, minutes for SST-2's 67k sentences one by one.
    for row, ids in enumerate(tokenizer.encode_batch(list(texts))):
        ids = ids[:max_length]
        out[row, : len(ids)] = ids
    return out


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
    row_length = block_size + 1
    rows, weights, segments = [], [], []
    row, weight, segment = [], [], []
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    encoded = zip(tokenizer.encode_batch(list(prompts)), tokenizer.encode_batch(list(responses)))
    for prompt, response in encoded:
        prompt_ids = [tokenizer.bos_id, *prompt.tolist()]
        response_ids = [*response.tolist(), tokenizer.eos_id]
        tokens = (prompt_ids + response_ids)[:row_length]
        scored = ([0] * len(prompt_ids) + [1] * len(response_ids))[:row_length]
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
    ids = np.full((len(rows), row_length), tokenizer.pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), row_length), dtype=np.float32)
    segment_ids = np.zeros((len(rows), row_length), dtype=np.int32)
    for i, (r, m, g) in enumerate(zip(rows, weights, segments)):
        ids[i, : len(r)] = r
        mask[i, : len(m)] = m
        segment_ids[i, : len(g)] = g
    # The weight of target t (token t+1) is whether token t+1 belongs to a response.
    return ids[:, :-1], ids[:, 1:], mask[:, 1:], segment_ids[:, :-1]


def read_prompt_response(path, prompt_field="prompt", response_field="response"):
    """Prompts and responses from a JSONL file (one JSON object per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    prompts, responses = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        for field in (prompt_field, response_field):
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise DataError(
                    f"{path}:{number}: expected a string field {field!r} "
                    f"(finetune.prompt_field / finetune.response_field); got keys "
                    f"{', '.join(record) if isinstance(record, dict) else type(record).__name__}"
                )
        prompts.append(record[prompt_field])
        responses.append(record[response_field])
    if not prompts:
        raise DataError(f"{path}: no examples")
    return prompts, responses


def _read_labelled(path, finetune):
    from kerasllm.data.readers import read_labelled

    texts, labels = read_labelled(
        path, text_column=finetune.text_column or None, label_column=finetune.label_column or None
    )
    return list(texts), [str(label) for label in labels]


def _dataset(arrays, batch_size, shuffle, seed, trim_pad_id=None):
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        ds = ds.shuffle(len(tf.nest.flatten(arrays)[0]), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if trim_pad_id is not None:
        ds = ds.map(lambda x, *rest: (_trim_padding(x, trim_pad_id), *rest))
    ds = ds.prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False  # fit() otherwise stalls on return (MEASURED.md)
    return ds.with_options(options)


def _trim_padding(x, pad_id, multiple=32):
    """Cuts a right-padded batch to its longest row, rounded up to `multiple` columns.

    Short examples (most SST-2 training phrases are under 40 characters) then cost a fraction
    of a full-length row; the rounding bounds the number of shapes XLA compiles.
    """
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(tf.not_equal(x, pad_id), tf.int32), axis=1))
    width = tf.minimum(tf.maximum((longest + multiple - 1) // multiple, 1) * multiple, tf.shape(x)[1])
    return x[:, :width]


# --- classification --------------------------------------------------------------------------
def build_classifier(config, backbone, tokenizer, labels):
    """The classifier `config.finetune` describes, on `backbone` (a pretrained LM).

    Applies, in order: `from_scratch` (fresh weights, same architecture), `drop_blocks`,
    the head (`pooling`, `add_dense`), `freeze_blocks`, and LoRA (`lora_rank > 0`: only the
    adapters and the head train).
    """
    ft = config.finetune
    if ft.from_scratch:
        keras.utils.set_random_seed(config.train.seed)
        backbone = build_model(config.model, vocab_size=backbone.vocab_size)
    backbone = truncate_backbone(backbone, ft.drop_blocks)
    keras.utils.set_random_seed(config.train.seed)
    model = SequenceClassifier(
        backbone, num_classes=len(labels), pooling=ft.pooling, add_dense=ft.add_dense,
        head_dropout=ft.head_dropout, pad_id=tokenizer.pad_id, labels=labels,
    )
    model.build((None, None))
    model.freeze_blocks(ft.freeze_blocks)
    if ft.lora_rank:
        apply_lora(
            model, ft.lora_rank, alpha=ft.lora_alpha, targets=ft.lora_targets,
            trainable=[*model.hidden, model.classifier_head],
        )
    return model


def count_trainable(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def predict_classes(model, ids, batch_size=64, pad_id=0):
    logits = model.predict(_dataset((ids,), batch_size, False, 0, trim_pad_id=pad_id), verbose=0)
    return np.argmax(logits, axis=-1)


def evaluate_classifier(model, tokenizer, texts, labels, max_length, source="data"):
    """Classification report of `model` on raw texts and labels (names from `model.labels`)."""
    y = label_ids(labels, model.labels, source)
    predicted = predict_classes(model, encode_texts(tokenizer, texts, max_length), pad_id=tokenizer.pad_id)
    return classification_report(confusion_matrix(y, predicted, len(model.labels)), model.labels)


def finetune(config, from_run, output_dir, log=print, verbose="auto"):
    """Fine-tunes the run in `from_run` on `data` as `config.finetune.task` says.

    Args:
        config: the fine-tuning `Config`; its `[model]` section is replaced by the pretrained
            run's, so only `[train]` and `[finetune]` matter.
            The training file is `data.dataset` (TSV/CSV/JSONL for `classify`, JSONL for
            `sft`); `finetune.val_data` (default: `finetune.val_fraction` of the training
            file) and `finetune.test_data` (optional, scored once at the end) are the others.
        from_run: a pretraining run directory.
        output_dir: the new run directory.

    Returns:
        `(model, tokenizer, metrics)`.
    """
    started = time.perf_counter()
    pretrained_config, tokenizer, backbone = load_run(from_run)
    config.model = dataclasses.replace(pretrained_config.model, vocab_size=tokenizer.vocabulary_size)
    ft, train = config.finetune, config.train
    data, val_data, test_data = config.data.dataset, ft.val_data or None, ft.test_data or None
    max_length = ft.max_length or config.model.block_size
    if config.model.arch == "gpt" and max_length > config.model.block_size:
        raise ConfigError(
            f"finetune.max_length = {ft.max_length} exceeds the pretrained context "
            f"model.block_size = {config.model.block_size}"
        )
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    info = {"task": ft.task, "from_run": str(from_run), "data": str(data), "val_data": val_data and str(val_data),
            "test_data": test_data and str(test_data)}

    if ft.task == "classify":
        texts, labels = _read_labelled(data, ft)
        names = label_names(labels, source=str(data))
        y = label_ids(labels, names, str(data))
        x = encode_texts(tokenizer, texts, max_length)
        if val_data:
            val_texts, val_labels = _read_labelled(val_data, ft)
            val_x, val_y = encode_texts(tokenizer, val_texts, max_length), label_ids(val_labels, names, str(val_data))
        else:
            order = rng.permutation(len(x))
            n_val = max(1, int(len(x) * ft.val_fraction))
            val_x, val_y, x, y = x[order[:n_val]], y[order[:n_val]], x[order[n_val:]], y[order[n_val:]]
        model = build_classifier(config, backbone, tokenizer, names)
        steps_per_epoch = math.ceil(len(x) / train.batch_size)
        train.max_steps = min(train.max_steps, ft.epochs * steps_per_epoch)
        model.compile(
            optimizer=build_optimizer(train, model),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=train.jit_compile,
        )
        train_ds = _dataset((x, y), train.batch_size, True, train.seed, trim_pad_id=tokenizer.pad_id).repeat()
        val_ds = _dataset((val_x, val_y), 64, False, 0, trim_pad_id=tokenizer.pad_id)
        trainable = count_trainable(model)
        log(
            f"classify: {len(x):,} train / {len(val_x):,} val examples, labels {names}, {max_length} tokens; "
            f"{trainable:,} of {model.count_params():,} parameters trainable; {train.max_steps} steps"
        )
        interval = min(train.eval_interval, train.max_steps)
        history = model.fit(
            train_ds, epochs=math.ceil(train.max_steps / interval), steps_per_epoch=interval,
            validation_data=val_ds, class_weight=class_weight_dict(ft.class_weights, names, y),
            callbacks=[keras.callbacks.CSVLogger(str(run_dir / "log.csv"))], verbose=verbose,
        ).history
        export = merge_lora(model) if ft.lora_rank else model
        predicted = predict_classes(export, val_x, pad_id=tokenizer.pad_id)
        val_report = classification_report(confusion_matrix(val_y, predicted, len(names)), names)
        metrics = {
            "task": "classify",
            "train_loss": float(history["loss"][-1]),
            "val_accuracy": val_report["accuracy"],
            "val_macro_f1": val_report["macro"]["f1"],
            "trainable_parameters": trainable,
            "parameters": int(export.count_params()),
            "steps": int(model.optimizer.iterations.numpy()),
            "labels": names,
        }
        if test_data:
            test_texts, test_labels = _read_labelled(test_data, ft)
            test_report = evaluate_classifier(export, tokenizer, test_texts, test_labels, max_length, str(test_data))
            metrics.update(test_accuracy=test_report["accuracy"], test_macro_f1=test_report["macro"]["f1"])
            log(f"test accuracy {test_report['accuracy']:.4f} on {test_report['examples']} examples")
        info["labels"] = names
        model = export
    elif ft.task == "sft":
        prompts, responses = read_prompt_response(data, ft.prompt_field, ft.response_field)
        pack = isinstance(backbone, GPT)  # an LSTM's state would leak between packed examples
        x, y, w, seg = pack_sft_examples(tokenizer, prompts, responses, max_length, pack=pack)
        if val_data:
            val_x, val_y, val_w, val_seg = pack_sft_examples(
                tokenizer, *read_prompt_response(val_data, ft.prompt_field, ft.response_field), max_length,
                pack=pack,
            )
        else:
            order = rng.permutation(len(x))
            n_val = max(1, int(len(x) * ft.val_fraction)) if len(x) > 1 else 0
            val_x, val_y, val_w, val_seg = (a[order[:n_val]] for a in (x, y, w, seg))
            x, y, w, seg = (a[order[n_val:]] for a in (x, y, w, seg))
        model = backbone
        if ft.lora_rank:
            apply_lora(model, ft.lora_rank, alpha=ft.lora_alpha, targets=ft.lora_targets)
        steps_per_epoch = math.ceil(len(x) / train.batch_size)
        train.max_steps = min(train.max_steps, ft.epochs * steps_per_epoch)
        model.compile(
            optimizer=build_optimizer(train, model),
            loss=sft_loss(),
            jit_compile=train.jit_compile,
        )
        trainable = count_trainable(model)
        log(
            f"sft: {len(prompts):,} examples packed into {len(x) + len(val_x):,} rows of {max_length} tokens "
            f"({int(w.sum()):,} response targets); {trainable:,} parameters trainable; {train.max_steps} steps"
        )
        interval = min(train.eval_interval, train.max_steps)


        def inputs(ids, segment_ids):
            return {"token_ids": ids, "segment_ids": segment_ids} if pack else ids

        history = model.fit(
            _dataset((inputs(x, seg), y, w), train.batch_size, True, train.seed).repeat(),
            epochs=math.ceil(train.max_steps / interval), steps_per_epoch=interval,
            validation_data=(
                _dataset((inputs(val_x, val_seg), val_y, val_w), train.batch_size, False, 0) if len(val_x) else None
            ),
            callbacks=[keras.callbacks.CSVLogger(str(run_dir / "log.csv"))], verbose=verbose,
        ).history
        model = merge_lora(model) if ft.lora_rank else model
        metrics = {
            "task": "sft",
            "train_loss": float(history["loss"][-1]),
            "val_loss": float(history["val_loss"][-1]) if "val_loss" in history else None,
            "trainable_parameters": trainable,
            "parameters": int(model.count_params()),
            "steps": int(train.max_steps),
        }
    else:  # pragma: no cover - the config's choices guard this
        raise ConfigError(f"finetune.task = {ft.task!r}: expected 'classify' or 'sft'")

    metrics["wall_seconds"] = float(time.perf_counter() - started)
    tokenizer.save(run_dir / TOKENIZER_DIR)
    config.save(run_dir / CONFIG_FILE)
    save_model_atomic(model, run_dir / MODEL_FILE)
    write_json_atomic(run_dir / FINETUNE_FILE, info)
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    return model, tokenizer, metrics


def sft_loss():
    """Next-token cross-entropy averaged over the weighted (response) targets only."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")


def read_finetune_info(run_dir):
    path = Path(run_dir) / FINETUNE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
