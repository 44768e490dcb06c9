"""Published checkpoints wherever a run directory is accepted, and continued pretraining."""

import numpy as np
import pytest

from conftest import run_module
from kerasllm.config import Config, TrainConfig
from kerasllm.training import pretrain
from kerasllm.training.rundir import RunDir, load_run


def tiny_hf_checkpoint(folder, **shape):
    """A random 1-layer, 16-wide GPT (context 16) and a byte tokenizer saved as a Hugging Face folder."""
    from kerasllm.checkpoints.writer import save_hf
    from kerasllm.models import GPT
    from kerasllm.tokenizers import ByteTokenizer

    tokenizer = ByteTokenizer()
    model = GPT(vocab_size=tokenizer.vocabulary_size, block_size=16, n_layer=1, n_head=2, n_embd=16, **shape)
    model.build((None, None))
    return save_hf(model, tokenizer, folder)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return tiny_hf_checkpoint(tmp_path_factory.mktemp("hf"), mlp_activation="gelu_tanh")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    rng = np.random.default_rng(0)
    path.write_text(" ".join(rng.choice(["to", "be", "or", "not", "that"], size=3000)) + "\n", encoding="utf-8")
    return path


def test_load_run_takes_a_hugging_face_folder(hf_folder):
    config, tokenizer, model = load_run(hf_folder)
    assert (config.model.n_embd, config.model.mlp_activation, tokenizer.kind) == (16, "gelu_tanh", "pretrained")
    assert model.count_params() > 0


def test_init_from_starts_from_the_checkpoints_weights_and_tokenizer(hf_folder, corpus, tmp_path):
    _, _, source = load_run(hf_folder)
    config = Config()
    config.data.dataset = str(corpus)
    config.model.n_layer = 3  # replaced by the checkpoint's architecture
    config.train = TrainConfig(batch_size=2, max_steps=2, eval_interval=2, eval_steps=1, warmup_steps=1,
                               learning_rate=1e-12, min_lr=0.0, jit_compile=False, grad_clip=0.0)
    model, tokenizer, metrics = pretrain(config, tmp_path / "run", init_from=hf_folder, log=lambda *_: None, verbose=0)
    assert config.model.n_layer == 3  # the caller's config is not changed
    assert tokenizer.kind == "pretrained" and metrics["steps"] == 2
    for got, want in zip(model.get_weights(), source.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6)  # a 1e-12 rate leaves the weights where they were
    saved_config, _, _ = load_run(tmp_path / "run")
    assert saved_config.model.n_layer == 1 and saved_config.model.mlp_activation == "gelu_tanh"
    assert RunDir(tmp_path / "run").kind() == "lm"
    lines = []
    pretrain(config, tmp_path / "run", init_from=hf_folder, log=lines.append, verbose=0)  # the same command
    assert any(line.startswith("already trained to step 2") for line in lines)


@pytest.mark.slow
def test_generate_cli_takes_a_checkpoint_folder(hf_folder):
    result = run_module("kerasllm.recipes.generate", "--model", hf_folder, "--prompt", "to be",
                        "--max-new-tokens", "5", "--temperature", "0", "--no-stream")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("to be")
