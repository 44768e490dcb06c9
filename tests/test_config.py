import pytest

from conftest import REPO_ROOT, run_module
from kerasllm.config import Config, ModelConfig, TrainConfig, describe_keys, find_recipe, load_config
from kerasllm.errors import ConfigError
from kerasllm.models import build_model
from kerasllm.training.schedules import build_schedule


def test_default_recipe_loads_and_round_trips(tmp_path):
    config = load_config("default")
    assert config.name == "default"
    assert config.data.dataset == "python-stdlib"
    path = tmp_path / "c.toml"
    config.save(path)
    assert load_config(str(path)) == config


def test_every_shipped_recipe_loads():
    for name in ["default", "shakespeare_char", "shakespeare_char_cpu", "shakespeare_char_lstm"]:
        assert load_config(name).name == name


def test_overrides_parse_types():
    config = load_config("default", ["model.n_layer=6", "train.learning_rate=3e-4",
                                     "model.bias=true", "data.dataset=tinyshakespeare",
                                     "sample.prompt='x = 1'"])
    assert config.model.n_layer == 6
    assert config.train.learning_rate == 3e-4
    assert config.model.bias is True
    assert config.data.dataset == "tinyshakespeare"
    assert config.sample.prompt == "x = 1"


def test_int_is_accepted_for_float():
    assert load_config("default", ["train.learning_rate=1"]).train.learning_rate == 1.0


@pytest.mark.parametrize(
    "assignment, words",
    [
        ("model.n_layers=6", ["unknown key", "model.n_layers", "n_layer"]),
        ("modle.n_layer=6", ["unknown key", "modle.n_layer"]),
        ("model.n_layer=six", ["model.n_layer", "integer"]),
        ("model.n_layer=1.5", ["model.n_layer", "integer"]),
        ("model.bias=1", ["model.bias", "true or false"]),
        ("model.arch=rnn", ["model.arch", "'gpt'", "'lstm'"]),
        ("model.n_layer", ["KEY=VALUE"]),
    ],
)
def test_bad_overrides_name_the_key(assignment, words):
    with pytest.raises(ConfigError) as info:
        load_config("default", [assignment])
    for word in words:
        assert word in str(info.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nmax_step = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*train.max_step"):
        load_config(str(path))


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(ConfigError, match="shakespeare_char_cpu"):
        find_recipe("no_such_recipe")


def test_from_dict_rejects_wrong_table():
    with pytest.raises(ConfigError, match="must be a table"):
        Config.from_dict({"model": 3})


# --- validation: ranges and rules across keys, one line naming the key and its source ---------
@pytest.mark.parametrize(
    "overrides, key, words",
    [
        (["model.n_head=3"], "model.n_head", ["model.n_embd = 128 must be divisible by model.n_head = 3"]),
        (["model.n_kv_head=3"], "model.n_kv_head", ["multiple of model.n_kv_head = 3"]),
        (["model.n_embd=24", "model.n_head=8", "model.positions='rope'"], "model.positions", ["even head size, got 3", "24 / 8"]),
        (["model.dropout=2"], "model.dropout", ["model.dropout = 2.0", "[0, 1)"]),
        (["finetune.head_dropout=2"], "finetune.head_dropout", ["finetune.head_dropout = 2.0", "[0, 1)"]),
        (["model.n_layer=0"], "model.n_layer", [">= 1"]),
        (["train.grad_accum_steps=5"], "train.grad_accum_steps", ["train.batch_size = 16 must be a multiple"]),
        (["train.grad_accum_steps=2", "train.steps_per_execution=4"], "train.steps_per_execution", ["use 1 with"]),
        (["train.max_steps=0"], "train.max_steps", [">= 1"]),
        (["train.eval_interval=0"], "train.eval_interval", [">= 1"]),
        (["train.eval_steps=-1"], "train.eval_steps", [">= 1"]),
        (["train.batch_size=0"], "train.batch_size", [">= 1"]),
        (["train.checkpoint_every=-1"], "train.checkpoint_every", [">= 0"]),
        (["train.learning_rate=0"], "train.learning_rate", ["> 0"]),
        (["train.learning_rate=nan"], "train.learning_rate", ["finite"]),
        (["train.min_lr=0.5"], "train.min_lr", ["min_lr <= train.learning_rate"]),
        (["train.momentum=1"], "train.momentum", ["[0, 1)"]),
        (["data.val_fraction=0"], "data.val_fraction", ["(0, 1)"]),
        (["model.arch='lstm'", "plan.remat='on'"], "plan.remat", ["model.arch = 'lstm'"]),
        (["model.dropout=0.1", "plan.remat='on'"], "plan.remat", ["needs model.dropout = 0"]),
        (["model.arch='lstm'", "model.positions='rope'"], "model.positions", ["GPT option"]),
        (["train.model_parallel=2", "plan.layout='data'"], "plan.layout", ["has no model axis"]),
        (["train.grad_clip=-1"], "train.grad_clip", [">= 0"]),
    ],
)
def test_each_mistake_is_one_line_naming_the_key_and_the_set(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config("default", overrides)
    message = str(info.value)
    assert "\n" not in message
    # The last --set among the keys the rule reads is the one named (the others held valid values).
    assert message.startswith(f"--set {overrides[-1]}: "), message
    assert key in message
    for word in words:
        assert word in message, message


def test_a_mistake_in_the_file_names_the_file_and_a_set_can_fix_it(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nn_embd = 64\nn_head = 3\n")
    with pytest.raises(ConfigError, match=r"^\S*bad.toml: model.n_embd = 64 must be divisible by model.n_head = 3$"):
        load_config(str(path))
    assert load_config(str(path), ["model.n_head=4"]).model.n_head == 4  # rules run after the overrides
    with pytest.raises(ConfigError, match=r"^--set model.n_embd=100: model.n_embd = 100 .* model.n_head = 3$"):
        load_config(str(path), ["model.n_embd=100"])


def test_validate_holds_python_made_configs_to_the_same_rules():
    config = load_config("default")
    config.model.n_head = 3  # set in Python: no file or --set to blame
    with pytest.raises(ConfigError, match=r"^model.n_embd = 128 must be divisible by model.n_head = 3$"):
        config.validate()
    with pytest.raises(ConfigError, match="model.dropout = 2"):
        ModelConfig(dropout=2.0).validate()
    with pytest.raises(ConfigError, match="train.optimizer = 'lion' is not one of"):
        TrainConfig(optimizer="lion").validate()
    with pytest.raises(ConfigError, match="finetune.head_dropout"):
        Config().set("finetune.head_dropout", 2.0)
    with pytest.raises(ConfigError, match="model.n_head = 3"):
        Config.from_dict({"model": {"n_head": 3}})
    assert Config().validate() == Config()


def test_builders_apply_the_config_rules():
    with pytest.raises(ConfigError, match=r"model.dropout = 2.0 is out of range"):
        build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, block_size=8, dropout=2.0), vocab_size=11)
    with pytest.raises(ConfigError, match="must be divisible by model.n_head = 3"):
        build_model(ModelConfig(n_layer=1, n_embd=16, n_head=3, block_size=8), vocab_size=11)
    with pytest.raises(ConfigError, match="train.learning_rate"):
        build_schedule(TrainConfig(learning_rate=float("inf")))


def test_describe_keys_prints_the_ranges():
    lines = describe_keys().splitlines()
    assert "  model.dropout (float in [0, 1), default 0.0): " in "\n".join(lines)
    assert any(line.startswith("  train.max_steps (int >= 1,") for line in lines)
    assert any(line.startswith("  train.learning_rate (float > 0,") for line in lines)


def test_every_recipe_in_the_folder_validates():
    for path in sorted((REPO_ROOT / "recipes").glob("*.toml")):
        assert load_config(str(path)).name


def test_pretrain_cli_reports_a_bad_key_before_reading_any_data(tmp_path):
    # The corpus does not exist: a config error must come first, with nothing read or printed.
    result = run_module(
        "kerasllm.recipes.pretrain", "--data", tmp_path / "missing.txt", "--output", tmp_path / "run",
        "--set", "model.n_head=3", timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        "error: --set model.n_head=3: model.n_embd = 128 must be divisible by model.n_head = 3"
    ], result.stderr
    assert not (tmp_path / "run").exists()
