"""The planner counts imported checkpoints exactly: GPT-2 (learned positions, biases), Llama
(GQA, untied head), Qwen2 (q/k/v biases only) and Qwen3 (q/k norms, a decoupled head_dim)."""

import json

import keras_hub
import pytest

from kerasllm.checkpoints import load_pretrained
from kerasllm.plan import count_params, flops_per_token, plan, weight_shapes

VOCAB = 300
COMMON = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=32, intermediate_dim=48)
GQA = dict(COMMON, num_query_heads=4, num_key_value_heads=2)
BACKBONES = {
    "gpt2": lambda: keras_hub.models.GPT2Backbone(**dict(COMMON, intermediate_dim=128), num_heads=4,
                                                  max_sequence_length=64),
    "llama": lambda: keras_hub.models.Llama3Backbone(**GQA, tie_word_embeddings=False),
    "qwen2": lambda: keras_hub.models.QwenBackbone(**GQA, tie_word_embeddings=True),
    "qwen3": lambda: keras_hub.models.Qwen3Backbone(**GQA, head_dim=12, tie_word_embeddings=False),
}
CAUSAL_LM = {"gpt2": keras_hub.models.GPT2CausalLM, "llama": keras_hub.models.Llama3CausalLM,
             "qwen2": keras_hub.models.QwenCausalLM}


def write_checkpoint(kind, folder):
    """A tiny random checkpoint of `kind` as a Hugging Face folder (keras-hub's own export;
    Qwen3, which keras-hub cannot export, through kerasllm's tensor table)."""
    from kerasllm.checkpoints.keras_hub_preset import backbone_hf_config, qwen3_tensors
    from kerasllm.checkpoints.safetensors_io import write_safetensors
    from kerasllm.tokenizers.pretrained import PretrainedTokenizer

    backbone = BACKBONES[kind]()
    folder.mkdir()
    if kind == "qwen3":
        (folder / "config.json").write_text(json.dumps(backbone_hf_config(backbone)))
        write_safetensors(qwen3_tensors(backbone), folder / "model.safetensors")
    else:
        CAUSAL_LM[kind](backbone=backbone, preprocessor=None).export_to_transformers(str(folder))
    config = json.loads((folder / "config.json").read_text())  # keras-hub's Qwen config omits it
    (folder / "config.json").write_text(json.dumps(dict(config, use_sliding_window=False)))
    tokenizer = PretrainedTokenizer.train(["hello world, the quick brown fox"] * 4, vocab_size=VOCAB)
    (folder / "tokenizer.json").write_text(tokenizer.tokenizer_json)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return backbone.count_params()


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_planner_counts_an_imported_checkpoint_exactly(kind, tmp_path):
    hub_count = write_checkpoint(kind, tmp_path / kind)
    config, _, model = load_pretrained(tmp_path / kind)
    m = config.model
    assert (m.qkv_bias, m.qk_norm, m.head_dim, m.tie_embeddings, m.n_kv_head) == {
        "gpt2": (False, False, 0, True, 0), "llama": (False, False, 0, False, 2),
        "qwen2": (True, False, 0, True, 2), "qwen3": (False, True, 12, False, 2)}[kind]
    shapes = {w.path: w.shape for w in weight_shapes(m)}
    assert shapes == {v.path.split("/", 1)[1]: tuple(v.shape) for v in model.weights}  # variable by variable
    counts = count_params(m)
    assert counts["total"] == model.count_params() == hub_count  # keras-hub's backbone holds an untied head too
    assert plan(m, measure_cpu=False)["parameters"]["total"] == counts["total"]
    head_width = 4 * (12 if kind == "qwen3" else 8)  # n_head * head_dim
    assert flops_per_token(m, seq_len=32, training=False) == 2 * counts["compute"] + 4 * 2 * 32 * head_width


def test_plan_command_sizes_a_checkpoint_folder_a_preset_and_a_run_without_their_weights(tmp_path):
    """`plan --model` reads only config.json (or a run's config.toml): the same count either way."""
    from kerasllm.checkpoints import pretrained_model_config
    from kerasllm.recipes.plan import build_parser, plan_arguments

    hub_count = write_checkpoint("qwen2", tmp_path / "hf")
    BACKBONES["llama"]().save_to_preset(str(tmp_path / "preset"))
    assert pretrained_model_config(tmp_path / "hf").n_kv_head == 2

    def planned(*argv):
        model, kwargs = plan_arguments(build_parser().parse_args(["--no-measure", *argv]))
        return plan(model, **{**kwargs, "measure_cpu": False})["parameters"]["total"], kwargs

    total, kwargs = planned("--model", str(tmp_path / "hf"), "--set", "train.batch_size=4")
    assert total == hub_count and kwargs["global_batch"] == 4
    assert planned("--model", str(tmp_path / "preset"))[0] == BACKBONES["llama"]().count_params()

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text(
        '[model]\nvocab_size = 100\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 8\n')
    from kerasllm.config import load_config
    from kerasllm.models import build_model

    run_model = build_model(load_config(str(tmp_path / "run" / "config.toml")).model)
    assert planned("--model", str(tmp_path / "run"))[0] == run_model.count_params()
