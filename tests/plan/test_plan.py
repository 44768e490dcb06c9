"""The planner: exact parameter counts, FLOPs, memory, time, layouts, CLI and the 7B launch recipe."""

import dataclasses
import json
import math

import pytest

from conftest import run_module
from kerasllm.config import ModelConfig, load_config
from kerasllm.errors import ConfigError
from kerasllm.models import build_model
from kerasllm.models.presets import PRESETS, get_preset, preset_names
from kerasllm.plan import count_params, flops_per_token, weight_shapes
from kerasllm.plan.hardware import HARDWARE, measure_peak_flops, parse_devices
from kerasllm.plan.memory import activation_bytes_per_token, kv_cache_bytes, training_memory
from kerasllm.plan.planner import parse_count, plan
from kerasllm.plan.sharding import weight_layouts

GiB = 2**30

# Every switch that changes a weight's shape, beyond the presets.
EXTRA_CONFIGS = [
    ModelConfig(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, positions="rope", norm="rmsnorm",
                mlp="swiglu", bias=False, tie_embeddings=False, block_size=16, vocab_size=37),
    ModelConfig(n_layer=1, n_embd=32, n_head=2, bias=False, tie_embeddings=False, block_size=16, vocab_size=37),
    ModelConfig(n_layer=1, n_embd=24, n_head=3, mlp="swiglu", mlp_hidden=40, block_size=8, vocab_size=11),
    ModelConfig(arch="lstm", n_layer=2, n_embd=16, block_size=8, vocab_size=21),
    ModelConfig(arch="lstm", n_layer=2, n_embd=16, hidden_size=24, block_size=8, vocab_size=21),
    ModelConfig(arch="lstm", n_layer=1, n_embd=16, hidden_size=24, tie_embeddings=False, block_size=8, vocab_size=21),
]


@pytest.mark.parametrize(
    "config", [get_preset(n) for n in preset_names() if n.endswith("-tiny")] + EXTRA_CONFIGS,
    ids=[n for n in preset_names() if n.endswith("-tiny")] + [f"extra{i}" for i in range(len(EXTRA_CONFIGS))],
)
def test_weight_shapes_and_count_equal_the_built_model(config):
    model = build_model(config)
    built = [(v.path.split("/", 1)[1], tuple(v.shape)) for v in model.weights]
    assert built == [(w.path, w.shape) for w in weight_shapes(config)]
    assert count_params(config)["total"] == model.count_params()


def test_published_parameter_counts():
    # GPT-2 small by hand: wte + wpe + 12 x (qkv, proj, fc, proj with biases + 2 LayerNorms) + ln_f.
    V, T, L, d = 50257, 1024, 12, 768
    assert V * d + T * d + L * (12 * d * d + 13 * d) + 2 * d == 124_439_808
    assert count_params(get_preset("gpt2-124m"))["total"] == 124_439_808
    # LLaMA-7B: embedding + untied head + 32 x (4 d^2 attention + 3 d h SwiGLU + 2 RMSNorm) + norm.
    V, L, d, h = 32000, 32, 4096, 11008
    assert 2 * V * d + L * (4 * d * d + 3 * d * h + 2 * d) + d == 6_738_415_616
    llama = count_params(get_preset("llama-7b"))
    assert llama["total"] == 6_738_415_616
    assert llama["head"] == llama["embeddings"] == V * d and llama["norms"] == (2 * L + 1) * d
    for name, preset in PRESETS.items():
        if preset.published_params:
            assert count_params(get_preset(name))["total"] == preset.published_params, name


def test_flops_per_token():
    gpt2 = get_preset("gpt2-124m")
    # nanoGPT's estimate_mfu: N = parameters without the position table; 6N + 12 L T d.
    n = 124_439_808 - 1024 * 768
    assert count_params(gpt2)["compute"] == n
    assert flops_per_token(gpt2) == 6 * n + 12 * 12 * 1024 * 768
    assert flops_per_token(gpt2, seq_len=256, training=False) == 2 * n + 4 * 12 * 256 * 768
    llama = get_preset("llama-7b")  # untied: the input table is a lookup, the head a matmul
    assert count_params(llama)["compute"] == 6_738_415_616 - 32000 * 4096
    lstm = ModelConfig(arch="lstm", n_layer=2, n_embd=16, block_size=8, vocab_size=21)
    assert flops_per_token(lstm) == 6 * count_params(lstm)["total"]  # tied table is the head; no attention


def test_memory_model():
    llama = get_preset("llama-7b")
    n = 6_738_415_616
    fp32 = training_memory(llama, 1, precision="float32", optimizer="adamw")
    assert fp32.weights == fp32.gradients == 4 * n and fp32.optimizer == 8 * n
    assert training_memory(llama, 1, precision="mixed_bfloat16").states == fp32.states  # Keras keeps fp32 variables
    assert training_memory(llama, 1, precision="bfloat16").states == 8 * n
    assert training_memory(llama, 1, optimizer="sgd").states == 8 * n
    assert training_memory(llama, 1, optimizer="momentum").states == 12 * n
    fsdp = training_memory(llama, 1, data_parallel=8, fsdp=True)
    assert fsdp.states == pytest.approx(fp32.states / 8)
    tp = training_memory(llama, 1, tensor_parallel=8)
    assert tp.states == pytest.approx(fp32.states / 8) and tp.activations < fp32.activations
    # Activations: linear in the micro-batch, smaller in 16 bits, much smaller with remat.
    two = training_memory(llama, 2)
    assert two.activations == pytest.approx(2 * fp32.activations)
    assert training_memory(llama, 1, precision="mixed_bfloat16").activations < 0.6 * fp32.activations
    remat = activation_bytes_per_token(llama, remat=True)
    plain = activation_bytes_per_token(llama)
    assert remat["layers"] < plain["layers"] / 8
    assert activation_bytes_per_token(llama, flash_attention=True)["total"] < plain["total"]
    # KV cache: 2 x 32 layers x 2048 x 4096 x 2 bytes = exactly 1 GiB; GQA shrinks it by H / K.
    assert kv_cache_bytes(llama, 1, 2048, "bfloat16") == GiB
    gqa = ModelConfig(**{**llama.__dict__, "n_kv_head": 8})
    assert kv_cache_bytes(gqa, 1, 2048, "bfloat16") == GiB / 4


def test_plan_llama_7b_on_8_h100():
    p = plan(get_preset("llama-7b"), devices="8xH100", tokens=1e12, global_batch=2048)
    rec = p["recommendation"]
    assert rec["fits"] and rec["strategy"] == "fsdp" and not rec["remat"]
    assert rec["memory"]["total"] <= 0.9 * HARDWARE["H100"].memory_bytes
    assert rec["micro_batch"] * rec["grad_accumulation"] * rec["data_parallel"] == 2048
    expected = flops_per_token(get_preset("llama-7b")) * 1e12 / (8 * HARDWARE["H100"].peak("bfloat16") * 0.4)
    assert p["time"]["seconds"] == pytest.approx(expected)
    assert 100 < p["time"]["days"] < 200  # Meta: 82k A100-hours for 1T tokens ~ 140 H100-days / 8
    assert p["chinchilla_tokens"] == 20 * 6_738_415_616
    data = next(r for r in p["memory"] if r["strategy"] == "data" and r["precision"] == "mixed_bfloat16")
    assert not data["fits"] and not data["fits_remat"]  # 100 GiB of states per device


def test_plan_does_not_fit_names_the_reason():
    p = plan(get_preset("llama-7b"), devices="1xH100", tokens=1e9)
    assert not p["recommendation"]["fits"]
    assert "more devices" in p["recommendation"]["reason"] and "H100" in p["recommendation"]["reason"]
    assert "does not fit" in p.format()


def test_plan_gpt2_on_cpu_and_remat_when_needed():
    p = plan(get_preset("gpt2-124m"), devices="1xCPU", tokens=10e9, measure_cpu=False)
    rec = p["recommendation"]
    assert rec["fits"] and rec["strategy"] == "data" and p["run"]["precision"] == "float32"
    assert "fits" in json.dumps(p.to_dict())
    tight = plan(get_preset("gpt2-1.5b"), devices="1xA100", tokens=1e9, global_batch=64)
    assert tight["recommendation"]["fits"]
    assert tight["recommendation"]["remat"] or tight["recommendation"]["micro_batch"] < 64


def test_parsing_errors_name_the_value():
    assert parse_count("10B") == 1e10 and parse_count("1T") == 1e12 and parse_count("2.5e9") == 2.5e9
    with pytest.raises(ConfigError, match="10X"):
        parse_count("10X")
    assert parse_devices("8xH100")[0] == 8 and parse_devices("v5p")[1].name == "TPUv5p"
    with pytest.raises(ConfigError, match="B200"):
        parse_devices("8xB200")
    with pytest.raises(ConfigError, match="nope"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="precision"):
        plan(get_preset("gpt2-124m-tiny"), devices="1xA100", precision="float8")


def test_measure_peak_flops_is_cached_and_plausible():
    first = measure_peak_flops("float32", n=512, repeats=3)
    assert 1e8 < first < 1e13
    assert measure_peak_flops("float32", n=512, repeats=3) is first


def test_layouts_only_split_divisible_dims():
    layouts = weight_layouts(get_preset("gpt2-124m"), (4, 2))
    assert layouts["token_embedding/embeddings"] == (None, "batch")  # 50257 rows stay whole
    assert layouts["block_0/attn/qkv/kernel"] == ("batch", "model")
    assert layouts["block_0/mlp/proj/kernel"] == ("model", "batch")
    assert layouts["block_0/norm_1/gamma"] == (None,)
    assert weight_layouts(get_preset("gpt2-124m"), (4, 2), fsdp=False)["block_0/attn/qkv/kernel"] == (None, "model")


def test_llama7b_recipe_is_the_planned_launch():
    config = load_config("llama7b_pretrain")
    assert count_params(config.model)["total"] == 6_738_415_616
    assert config.model == get_preset("llama-7b")
    p = plan(config.model, devices=config.plan.devices, tokens=parse_count(config.plan.tokens),
             global_batch=config.train.batch_size, precision=config.train.precision,
             strategy=config.plan.layout, micro_batch=config.plan.micro_batch,
             remat=config.plan.remat == "on", flash_attention=config.plan.flash_attention == "on")
    rec = p["recommendation"]
    assert rec["fits"], rec["reason"]
    assert rec["tensor_parallel"] == config.train.model_parallel
    assert rec["grad_accumulation"] == config.train.grad_accum_steps
    assert math.ceil(parse_count(config.plan.tokens) / (2048 * 2048)) == config.train.max_steps


@pytest.mark.slow  # a subprocess CLI run: the quick loop keeps one of this kind
def test_cli_json_and_errors():
    result = run_module("kerasllm.recipes.plan", "--preset", "llama-7b", "--devices", "8xH100",
                        "--tokens", "1T", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["parameters"]["total"] == 6_738_415_616 and data["recommendation"]["fits"]
    result = run_module("kerasllm.recipes.plan", "--preset", "gpt2-124m", "--devices", "1xCPU",
                        "--tokens", "10Q", "--no-measure")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "10Q" in errors[0]


def test_cli_table(capsys):
    from kerasllm.recipes.plan import main

    main(["--preset", "gpt2-124m", "--devices", "1xCPU", "--tokens", "10B", "--no-measure"])
    out = capsys.readouterr().out
    assert "124,439,808" in out and "recommendation" in out and "strategy data" in out


@pytest.mark.slow
def test_llama7b_recipe_tiny_dims_trains_on_cpu(tmp_path, shared_data):
    """The launch recipe's exact architecture, with tiny dimensions, end to end on a CPU."""
    from kerasllm.training import pretrain

    tiny = get_preset("llama-7b-tiny")
    overrides = [f"model.{key}={getattr(tiny, key)}" for key in ("n_layer", "n_head", "n_embd", "mlp_hidden")]
    overrides += [
        "model.block_size=32", f'data.dataset="{shared_data / "tinyshakespeare" / "input.txt"}"',
        "data.vocab_size=320", "data.split=position", "train.batch_size=16", "train.grad_accum_steps=2",
        "train.max_steps=40", "train.eval_interval=20", "train.checkpoint_every=20", "train.eval_steps=2",
        "train.warmup_steps=5", "train.learning_rate=3e-3", "train.min_lr=3e-4", "train.model_parallel=1",
        "train.precision=float32", "sample.max_new_tokens=5",
        'plan.layout="auto"',  # the recipe's fsdp+tensor needs KERAS_BACKEND=jax
    ]
    config = load_config("llama7b_pretrain", overrides)
    model, tokenizer, metrics = pretrain(config, tmp_path / "run", log=lambda *a: None, verbose=0)
    resolved = dataclasses.replace(config.model, vocab_size=tokenizer.vocabulary_size)  # pretrain left `config` alone
    assert model.count_params() == count_params(resolved)["total"] == metrics["parameters"]
    assert model.positions == "rope" and model.norm == "rmsnorm" and not model.tie_embeddings
    assert metrics["val_loss"] < math.log(tokenizer.vocabulary_size) - 0.5


@pytest.mark.parametrize("flag, value", [("--batch", "-4"), ("--batch", "0"), ("--micro-batch", "-1"),
                                         ("--inference-batch", "0"), ("--vocab", "0")])
def test_cli_rejects_counts_that_are_not_positive(flag, value):
    from kerasllm.recipes.plan import build_parser, plan_arguments

    args = build_parser().parse_args(["--preset", "gpt2-124m", "--no-measure", f"{flag}={value}"])
    with pytest.raises(ConfigError, match=f"^{flag} {value}: expected "):
        plan_arguments(args)
    with pytest.raises(ConfigError, match="--batch -4"):
        plan(get_preset("gpt2-124m"), global_batch=-4, measure_cpu=False)


def test_more_data_parallel_devices_than_sequences():
    llama = get_preset("llama-7b")
    # 4096 devices, 2048 sequences: data and fsdp would idle half the devices; tensor parallel does not.
    p = plan(llama, devices="4096xH100", tokens=1e12, global_batch=2048)
    rec = p["recommendation"]
    assert rec["strategy"] in ("tensor", "fsdp+tensor") and rec["data_parallel"] * rec["tensor_parallel"] == 4096
    assert rec["data_parallel"] <= 2048
    assert [note.split(":")[0] for note in p["notes"]] == ["layout data left out", "layout fsdp left out"]
    assert "note: layout data left out: its 4096 data-parallel devices need a global batch of at least 4096" in p.format()
    assert plan(llama, devices="8xH100", tokens=1e12, global_batch=2048)["notes"] == []
    # Where no layout can use every device, one error says what was expected.
    with pytest.raises(ConfigError, match=r"4096 H100 devices with a global batch of 2048 sequences .* at least 4096"):
        plan(llama, devices="4096xH100", tokens=1e12, global_batch=2048, strategy="fsdp")
    lstm = ModelConfig(arch="lstm", n_layer=2, n_embd=16, block_size=8, vocab_size=21)
    with pytest.raises(ConfigError, match="expected a batch of at least 8"):
        plan(lstm, devices="8xH100", global_batch=4)


@pytest.mark.slow  # a subprocess CLI run: the quick loop keeps one of this kind
def test_cli_too_many_devices_is_one_error_line():
    result = run_module("kerasllm.recipes.plan", "--preset", "llama-7b", "--devices", "4096xH100",
                        "--batch", "2048", "--strategy", "data", "--tokens", "1T")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--devices" in errors[0] and "at least 4096" in errors[0], result.stderr
