"""[[data.sources]] in a recipe: loading, --set addressing, round trips and errors naming the entry."""

import pytest

from kerasllm.config import Config, DataConfig, SourceConfig, describe_keys, load_config
from kerasllm.errors import ConfigError

MIXTURE = """
name = "mix"

[data]
tokenizer = "char"

[[data.sources]]
dataset = "books/*.txt"
weight = 3

[[data.sources]]
dataset = "code.jsonl"
text_field = "content"
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "mix.toml"
    path.write_text(MIXTURE)
    return path


def test_sources_load_with_defaults_and_round_trip(recipe, tmp_path):
    config = load_config(str(recipe))
    assert config.data.sources == [SourceConfig("books/*.txt", 3.0, ""), SourceConfig("code.jsonl", 1.0, "content")]
    config.save(tmp_path / "saved.toml")
    assert "[[data.sources]]" in (tmp_path / "saved.toml").read_text()
    assert load_config(str(tmp_path / "saved.toml")) == config


def test_set_reaches_an_entry_adds_one_or_replaces_the_list(recipe):
    config = load_config(str(recipe), ["data.sources[1].weight=0.5", "data.sources[2].dataset=extra.txt"])
    assert [s.weight for s in config.data.sources] == [3.0, 0.5, 1.0]
    assert config.data.sources[2].dataset == "extra.txt"
    assert config.source_of("data.sources[1].weight") == "--set data.sources[1].weight=0.5"
    assert config.source_of("data.sources[0].weight") == str(recipe)
    inline = load_config(str(recipe), ['data.sources=[{dataset = "a.txt"}, {dataset = "b.txt", weight = 2}]'])
    assert inline.data.sources == [SourceConfig("a.txt"), SourceConfig("b.txt", 2.0)]
    single = load_config(str(recipe), ["data.sources=[]", "data.dataset=a.txt"])
    assert single.data.sources == [] and single.data.dataset == "a.txt"


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["data.sources[1].weight=0"], ["--set data.sources[1].weight=0:", "data.sources[1].weight = 0.0", "> 0"]),
        (["data.sources[1].weight=-2"], ["data.sources[1].weight", "> 0"]),
        (["data.sources[0].weight=abc"], ["data.sources[0].weight", "a number"]),
        (["data.sources[0].wieght=2"], ["unknown key 'data.sources[0].wieght'", "dataset, weight, text_field"]),
        (["data.sources[5].weight=2"], ["data.sources[5].weight", "there are 2 sources", "index 2 adds one"]),
        (["data.sources[2].weight=2"], ["--set data.sources[2].weight=2:", "data.sources[2].dataset is missing"]),
        (["data.sources[x].weight=2"], ["unknown key 'data.sources[x].weight'", "data.sources[INDEX].KEY"]),
        (["data.sources=3"], ["data.sources must be an array of tables"]),
        (["data.sources[1].dataset=books/*.txt", "data.sources[1].text_field=''"],
         ["data.sources[1].dataset = 'books/*.txt' repeats data.sources[0]"]),
        (["data.dataset=other.txt"], ["data.dataset = 'other.txt' and 2 [[data.sources]] are both set", "data.sources=[]"]),
    ],
)
def test_mistakes_name_the_entry_and_where_it_was_set(recipe, overrides, words):
    with pytest.raises(ConfigError) as info:
        load_config(str(recipe), overrides)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "table, words",
    [
        ('[[data.sources]]\ndataset = "a"\nwieght = 2\n', ["bad.toml", "unknown key 'data.sources[0].wieght'"]),
        ('[[data.sources]]\ndataset = "a"\n[[data.sources]]\nweight = 2\n', ["bad.toml", "data.sources[1].dataset is missing"]),
        ('[[data.sources]]\ndataset = "a"\nweight = 0\n', ["bad.toml", "data.sources[0].weight = 0.0 is out of range"]),
        ('[data]\nsources = "a.txt"\n', ["bad.toml", "data.sources must be an array of tables"]),
    ],
)
def test_file_mistakes_name_the_file_and_the_entry(tmp_path, table, words):
    path = tmp_path / "bad.toml"
    path.write_text(table)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    for word in words:
        assert word in str(info.value)


def test_tables_made_in_python_are_checked_too():
    with pytest.raises(ConfigError, match=r"data.sources\[0\].weight = 0 is out of range"):
        DataConfig(sources=[SourceConfig("a.txt", weight=0)]).validate()
    with pytest.raises(ConfigError, match=r"data.sources\[0\].*expected a kerasllm.config.SourceConfig"):
        Config(data=DataConfig(sources=[{"dataset": "a.txt"}])).validate()


def test_help_lists_the_entry_keys():
    lines = describe_keys().splitlines()
    assert any(line.startswith("  data.sources[I].weight (float > 0, default 1.0)") for line in lines)
