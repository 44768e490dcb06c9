"""Fine-tuning a pretrained run: sequence classification and prompt -> response (SFT).

`finetune` reads top to bottom: resolve the config -> read the data -> build the model -> fit
with best-pass selection -> evaluate -> save. What the tasks share is in `common`; each task
(`classify`, `sft`) supplies `load_examples`, `build`, `describe`, `datasets`, `evaluate` and
`info`. A fine-tuned run directory has the pretraining layout (`RunDir`) plus `finetune.json`
(the source run, the data files and, for classifiers, the label mapping); `load_run` opens it
like any other run.

Defaults follow the size of the training set (`common.size_schedule`, README "Fine-tuning"):
with `train.max_steps` left at its default, small sets get more epochs at a lower peak rate,
validation runs every epoch (at most every 500 steps), and the best validation pass is the
model saved.
"""

import time

import keras

from kerasllm.data.batches import encode_texts
from kerasllm.data.labels import class_weight_dict, label_ids, label_names
from kerasllm.data.readers import read_prompt_response
from kerasllm.models.lora import merge_lora
from kerasllm.training.finetune import classify, sft
from kerasllm.training.finetune.classify import build_classifier, evaluate_classifier, predict_classes
from kerasllm.training.finetune.common import (
    KINDS,
    count_trainable,
    fit_selected,
    read_finetune_info,
    refuse_source_as_output,
    resolve_model,
    save_run,
    size_schedule,
)
from kerasllm.training.finetune.sft import pack_sft_examples, sft_loss
from kerasllm.training.rundir import RunDir, load_run

TASKS = {"classify": classify, "sft": sft}


def finetune(config, from_run, output_dir, log=print, verbose="auto"):
    """Fine-tunes the run in `from_run` on `data` as `config.finetune.task` says.

    Args:
        config: the fine-tuning `Config` (not changed: a resolved copy is used and saved); its
            `[model]` comes from the pretrained run, so only `[train]` and `[finetune]` matter.
            The training file is `data.dataset` (TSV/CSV/JSONL for `classify`, JSONL for
            `sft`); `finetune.val_data` (default: `finetune.val_fraction` of the training
            file) and `finetune.test_data` (optional, scored once at the end) are the others.
        from_run: a pretraining run directory.
        output_dir: the new run directory: empty, absent or a run of the same kind; never
            `from_run`. It is locked while being written.

    Returns:
        `(model, tokenizer, metrics)`: the kept (best validation) model and `metrics.json`.
    """
    started = time.perf_counter()
    task, run = TASKS[config.finetune.task], RunDir(output_dir)
    refuse_source_as_output(from_run, output_dir)
    cropped = (config.source_of("model.block_size") or "").startswith("--set")  # else the run's context
    pretrained, tokenizer, backbone = load_run(from_run, block_size=config.model.block_size if cropped else None)
    with run:  # the directory's lock, held while the run is written
        run.claim(KINDS[config.finetune.task], what="finetune")
        config = resolve_model(config, pretrained, tokenizer)  # a copy: the caller's stays as given
        keras.utils.set_random_seed(config.train.seed)
        examples = task.load_examples(config, tokenizer, backbone)
        config = size_schedule(config, examples.train_size)

        model = task.build(config, backbone, tokenizer, examples)
        trainable = count_trainable(model)
        log(f"{task.describe(config, examples)}; {trainable:,} of {model.count_params():,} parameters trainable; "
            f"{config.train.max_steps} steps at peak rate {config.train.learning_rate:g}, validation every "
            f"{config.train.eval_interval}")
        train_ds, val_ds, fit_kwargs = task.datasets(config, tokenizer, examples)
        selection = fit_selected(model, config, train_ds, val_ds, run, verbose, **fit_kwargs)

        metrics = {**task.evaluate(model, config, tokenizer, examples, log), **selection}
        model = merge_lora(model) if config.finetune.lora_rank else model
        metrics.update(trainable_parameters=trainable, parameters=int(model.count_params()),
                       wall_seconds=float(time.perf_counter() - started))
        info = {"task": config.finetune.task, "from_run": str(from_run), "data": str(config.data.dataset),
                "val_data": config.finetune.val_data or None, "test_data": config.finetune.test_data or None,
                **task.info(examples)}
        save_run(run, config, tokenizer, model, info, metrics)
    return model, tokenizer, metrics


__all__ = [
    "build_classifier",
    "class_weight_dict",
    "encode_texts",
    "evaluate_classifier",
    "finetune",
    "label_ids",
    "label_names",
    "pack_sft_examples",
    "predict_classes",
    "read_finetune_info",
    "read_prompt_response",
    "sft_loss",
    "size_schedule",
]
