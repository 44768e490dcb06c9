"""recipes/gpt2_finetune_sst2.toml: fine-tuning published GPT-2 on SST-2 parses, validates and
points at the shared data; `finetune --from hf://...` is accepted (no network used here)."""

import shlex

import pytest

from conftest import REPO_ROOT
from kerasllm.config import load_config
from kerasllm.errors import DataError
from kerasllm.recipes.finetune import build_parser, main

RECIPE = REPO_ROOT / "recipes" / "gpt2_finetune_sst2.toml"


def test_the_recipe_validates_and_leaves_the_model_to_the_checkpoint():
    config = load_config("gpt2_finetune_sst2")
    assert config.name == "gpt2_finetune_sst2" and config.finetune.task == "classify"
    assert (config.finetune.text_column, config.finetune.label_column, config.finetune.pooling) == ("sentence", "label", "last")
    assert config.data.dataset == "../shared/data/sentiment/sst2/train.tsv"
    assert config.finetune.val_data.endswith("sst2/dev.tsv") and config.finetune.test_data.endswith("sst2/test.tsv")
    # No [model] keys: the architecture and tokenizer come from the checkpoint given as --from.
    assert not [key for key in ("model.n_layer", "model.n_embd", "model.block_size", "data.tokenizer")
                if config.source_of(key)]
    assert config.finetune.max_length <= 1024  # GPT-2's context


def test_the_recipes_command_parses_to_an_hf_checkpoint():
    lines = [line.lstrip("# ").strip() for line in RECIPE.read_text().splitlines()]
    command = next(line for line in lines if line.startswith("python -m kerasllm.recipes.finetune"))
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert (args.recipe, args.from_run) == ("gpt2_finetune_sst2", "hf://openai-community/gpt2")


def test_the_recipes_data_has_the_named_columns():
    from kerasllm.data.readers import read_labelled

    config = load_config("gpt2_finetune_sst2")
    path = REPO_ROOT / config.finetune.test_data
    if not path.is_file():
        pytest.skip(f"{path}: the shared SST-2 data is not here")
    texts, labels = read_labelled(path, config.finetune.text_column, config.finetune.label_column)
    assert len(texts) == len(labels) > 800 and set(labels) == {0, 1}


def test_finetune_from_hf_reaches_the_download_offline(monkeypatch, tmp_path):
    # hf:// is a checkpoint, not a missing run directory: offline, the error is the download's.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    with pytest.raises(DataError, match=r"hf://nobody/not-cached-anywhere: (cannot download|downloading needs)"):
        main(["--recipe", "gpt2_finetune_sst2", "--from", "hf://nobody/not-cached-anywhere", "--data", str(data),
              "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
