import pytest

from kerasllm.config import Config, find_recipe, load_config
from kerasllm.errors import ConfigError


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
