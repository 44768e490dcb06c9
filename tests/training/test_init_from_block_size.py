"""`--set model.block_size=N` with a checkpoint: a shorter context crops it (nanoGPT's
`crop_block_size`), a longer one is an error naming model.block_size and the limit."""

import numpy as np
import pytest

from conftest import run_module
from test_init_from import corpus, tiny_hf_checkpoint  # noqa: F401 (the same tiny word corpus fixture)
from kerasllm.config import Config, TrainConfig
from kerasllm.errors import ConfigError
from kerasllm.training import pretrain
from kerasllm.training.rundir import load_run

SHAPES = {
    "gpt2": dict(mlp_activation="gelu_tanh"),
    "llama": dict(positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=1),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {kind: tiny_hf_checkpoint(tmp_path_factory.mktemp(kind), **shape) for kind, shape in SHAPES.items()}


def tiny_config(corpus, *overrides):
    config = Config()
    config.data.dataset = str(corpus)
    config.train = TrainConfig(batch_size=2, max_steps=1, eval_interval=1, eval_steps=1, warmup_steps=1,
                               learning_rate=1e-12, min_lr=0.0, jit_compile=False, grad_clip=0.0)
    for assignment in overrides:
        config.override(assignment)
    return config


@pytest.mark.parametrize("kind", list(SHAPES))
def test_init_from_with_a_shorter_block_size_crops_the_checkpoint(kind, folders, corpus, tmp_path):
    _, _, source = load_run(folders[kind])
    config = tiny_config(corpus, "model.block_size=8")
    model, _, _ = pretrain(config, tmp_path / "run", init_from=folders[kind], log=lambda *_: None, verbose=0)
    assert model.block_size == 8 and load_run(tmp_path / "run")[0].model.block_size == 8
    if kind == "gpt2":  # learned positions: the first 8 rows of the table
        np.testing.assert_allclose(np.asarray(model.position_embedding.position_embeddings),
                                   np.asarray(source.position_embedding.position_embeddings)[:8], atol=1e-6)
    else:  # RoPE: every weight as it was, only the context is shorter
        assert [w.shape for w in model.weights] == [w.shape for w in source.weights]
    x = np.arange(8, dtype="int32")[None] + 60
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(source(x)), atol=1e-5)  # a 1e-12 rate moves nothing


def test_a_recipes_block_size_does_not_crop(folders, corpus, tmp_path):
    config = tiny_config(corpus)
    config.model.block_size = 8  # as a recipe's [model] would: replaced by the checkpoint's
    model, _, _ = pretrain(config, tmp_path / "run", init_from=folders["gpt2"], log=lambda *_: None, verbose=0)
    assert model.block_size == 16


@pytest.mark.slow  # a subprocess CLI run: the quick loop keeps one of this kind
def test_init_from_with_a_longer_block_size_is_one_error_line(folders, corpus, tmp_path):
    folder = folders["gpt2"]
    result = run_module("kerasllm.recipes.pretrain", "--init-from", folder, "--data", corpus, "--set",
                        "model.block_size=32", "--output", tmp_path / "run", "--no-sample")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {folder}/config.json: the checkpoint's context is 16 tokens; model.block_size = 32 is longer "
        "(use at most 16)"
    )


def test_a_kerasllm_run_is_cropped_or_refused_likewise(folders, corpus, tmp_path):
    pretrain(tiny_config(corpus), tmp_path / "run", init_from=folders["gpt2"], log=lambda *_: None, verbose=0)
    _, _, full = load_run(tmp_path / "run")
    config, _, cropped = load_run(tmp_path / "run", block_size=8)
    assert config.model.block_size == cropped.block_size == 8
    x = np.arange(8, dtype="int32")[None] + 60
    np.testing.assert_allclose(np.asarray(cropped(x)), np.asarray(full(x)), atol=1e-6)
    with pytest.raises(ConfigError, match=r"config.toml: the run's context is 16 tokens; model.block_size = 17 is longer"):
        load_run(tmp_path / "run", block_size=17)


def test_finetune_from_a_checkpoint_with_a_shorter_block_size(folders, tmp_path):
    from kerasllm.training.finetune import finetune

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{'good' if i % 2 else 'bad'} day {i}\t{i % 2}\n" for i in range(20)))
    config = Config(name="cls")
    for assignment in (f'data.dataset="{data}"', "model.block_size=8", "train.batch_size=4", "train.max_steps=2",
                       "train.eval_interval=2", "train.jit_compile=false"):
        config.override(assignment)
    _, _, metrics = finetune(config, folders["gpt2"], tmp_path / "cls", log=lambda *_: None, verbose=0)
    saved, _, _ = load_run(tmp_path / "cls")
    assert saved.model.block_size == 8 and saved.finetune.max_length == 8 and metrics["steps"] == 2
