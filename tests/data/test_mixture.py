"""Mixtures of corpora: weights honoured, each source's own shuffled stream, exact resume from
any batch without replay, one worker's share of each batch, one shared tokenizer, a split per
source, and a mixture of one that is exactly its single source."""

import numpy as np
import pytest

from kerasllm.config import load_config
from kerasllm.data import lm_dataset
from kerasllm.data.mixture import (
    Mixture,
    MixtureSchedule,
    mixture_dataset,
    mixture_validation_dataset,
    prepare_training_data,
    quotas,
)
from kerasllm.data.prepare import prepare_lm_data
from kerasllm.errors import DataError

QUIET = {"log": lambda *_: None}


def batches(dataset, n):
    return [x.numpy() for x, _ in dataset.take(n)]


def test_quotas_sum_to_the_cycle_and_keep_every_source():
    assert quotas([5.0, 3.0, 2.0], cycle=10).tolist() == [5, 3, 2]
    assert quotas([1.0, 1e-9], cycle=100).tolist() == [99, 1]  # a tiny weight still appears
    assert quotas([1.0, 1.0, 1.0], cycle=1 << 16).sum() == 1 << 16


def test_weights_are_honoured_over_many_batches_and_vary_within_them():
    weights = [5.0, 3.0, 2.0]
    schedule = MixtureSchedule([50, 400, 7], weights, seed=11)
    sources, _ = schedule.lookup(0, 3000 * 16)  # 3,000 batches of 16
    shares = np.bincount(sources, minlength=3) / len(sources)
    np.testing.assert_allclose(shares, np.asarray(weights) / 10, atol=0.005)
    per_batch = np.stack([np.bincount(b, minlength=3) for b in sources.reshape(-1, 16)])
    assert len({tuple(row) for row in per_batch.tolist()}) > 10  # a random deal, not a fixed pattern
    other, _ = MixtureSchedule([50, 400, 7], weights, seed=12).lookup(0, 1000)
    assert not np.array_equal(other, sources[:1000])


def test_each_source_walks_its_windows_once_per_epoch_in_a_new_order():
    schedule = MixtureSchedule([40, 300], [1.0, 1.0], seed=3, cycle=64)
    sources, windows = schedule.lookup(0, 4000)
    small = windows[sources == 0]
    epochs = small[: len(small) // 40 * 40].reshape(-1, 40)
    assert all(sorted(epoch) == list(range(40)) for epoch in epochs.tolist())
    assert len({tuple(epoch) for epoch in epochs.tolist()}) == len(epochs)  # reshuffled each epoch


@pytest.mark.parametrize("first", [1, 63, 64, 130, 1999])  # inside, at and across cycle boundaries
def test_any_position_is_computed_without_replay(first):
    full = MixtureSchedule([40, 300, 9], [2.0, 1.0, 1.0], seed=5, cycle=64).lookup(0, 2100)
    fresh = MixtureSchedule([40, 300, 9], [2.0, 1.0, 1.0], seed=5, cycle=64).lookup(first, 2100 - first)
    np.testing.assert_array_equal(fresh[0], full[0][first:])
    np.testing.assert_array_equal(fresh[1], full[1][first:])


@pytest.fixture
def mixture():
    # Source i holds ids 1000 * (i + 1) + k: every window tells which source it came from.
    views = [np.arange(n, dtype=np.int32) + 1000 * (i + 1) for i, n in enumerate([300, 900, 150])]
    return Mixture(views, [3.0, 1.0, 1.0], ["a", "b", "c"])


def test_a_resumed_stream_is_the_uninterrupted_one(mixture):
    full = batches(mixture_dataset(mixture, 8, 4, stride=4, seed=7), 60)
    for start in (1, 25, 59):
        resumed = batches(mixture_dataset(mixture, 8, 4, stride=4, seed=7, start_batch=start), 60 - start)
        np.testing.assert_array_equal(np.stack(resumed), np.stack(full[start:]))
    rows = np.concatenate(full)
    assert (rows // 1000 == rows[:, :1] // 1000).all()  # no window spans two sources
    assert set(np.unique(rows[:, 0] // 1000).tolist()) == {1, 2, 3}
    assert (rows[:, 0] % 4 == 0).all()  # window starts on the stride


def test_workers_read_disjoint_shares_that_make_up_each_batch(mixture):
    whole = batches(mixture_dataset(mixture, 8, 4, seed=2, start_batch=3), 10)
    halves = [batches(mixture_dataset(mixture, 8, 4, seed=2, start_batch=3, num_shards=2, shard_index=i), 10)
              for i in (0, 1)]
    assert halves[0][0].shape == (2, 8)
    np.testing.assert_array_equal(np.stack([np.concatenate(pair) for pair in zip(*halves)]), np.stack(whole))
    with pytest.raises(DataError, match="cannot be shared by 3 workers"):
        mixture_dataset(mixture, 8, 4, num_shards=3, shard_index=0)


def test_validation_spreads_each_sources_share_over_its_split(mixture):
    rows = np.concatenate(batches(mixture_validation_dataset(mixture, 8, 5, batches=20), 100))
    assert len(rows) == 100
    per_source = np.bincount(rows[:, 0] // 1000, minlength=4)[1:]
    np.testing.assert_allclose(per_source / 100, [0.6, 0.2, 0.2], atol=0.11)
    b = rows[rows[:, 0] // 1000 == 2, 0] - 2000
    assert b.min() < 100 and b.max() > 700  # across the whole split, not its first pages
    assert np.array_equal(rows, np.concatenate(batches(mixture_validation_dataset(mixture, 8, 5, batches=20), 100)))


def test_a_source_too_small_for_a_window_is_named():
    small = Mixture([np.arange(100), np.arange(5)], [1.0, 1.0], ["big.txt", "tiny.txt"])
    with pytest.raises(DataError, match=r"data.sources\[1\].dataset = 'tiny.txt': its train split has 5 tokens"):
        mixture_dataset(small, 8, 4)


# --- preparation: stores, tokenizer, splits ---------------------------------------------------
def write_sources(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    (folder / "latin.txt").write_text(" ".join(rng.choice(["abc", "ab", "ca", "b"], 3000)) + "\n")
    (folder / "digits").mkdir(exist_ok=True)
    for i in range(3):
        (folder / "digits" / f"{i}.txt").write_text(" ".join(rng.choice(["123", "32", "1"], 1500)) + "\n")
    return folder / "latin.txt", folder / "digits"


def mixture_config(tmp_path, *extra):
    latin, digits = write_sources(tmp_path / "data")
    sources = f'data.sources=[{{dataset = "{latin}", weight = 3}}, {{dataset = "{digits}"}}]'
    return load_config("default", [sources, f'data.cache_dir="{tmp_path / "cache"}"', *extra]).data


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_each_source_gets_its_own_store_with_one_tokenizer_and_its_own_split(tmp_path, kind):
    data = mixture_config(tmp_path, f"data.tokenizer={kind}", "data.vocab_size=40", "data.val_fraction=0.2")
    prepared = prepare_training_data(data, **QUIET)
    assert isinstance(prepared.train_ids, Mixture) and len(prepared.store) == 2
    latin, digits = prepared.store
    assert latin.directory != digits.directory and digits.documents == 3
    assert {s.index["tokenizer_fingerprint"] for s in prepared.store} == {prepared.tokenizer.fingerprint()}
    tokenizer = prepared.tokenizer
    for index, alphabet in enumerate(["abc", "123"]):
        train, val = prepared.train_ids.views[index], prepared.val_ids.views[index]
        assert len(val) == pytest.approx(0.2 * len(prepared.store[index]), abs=2)
        text = tokenizer.decode(np.concatenate([train[:], val[:]]))
        assert set(text) - set(" \n") == set(alphabet)  # each split holds its own source only
    rows = np.concatenate(batches(mixture_dataset(prepared.train_ids, 16, 8, seed=1), 50))
    latin_rows = sum(set(tokenizer.decode(r)) <= set("abc \n") for r in rows)
    assert latin_rows / len(rows) == pytest.approx(0.75, abs=0.08)
    again = prepare_training_data(data, **QUIET)  # the second run reuses tokenizer and stores
    assert again.tokenizer.fingerprint() == tokenizer.fingerprint()
    assert [s.directory for s in again.store] == [s.directory for s in prepared.store]


def test_a_char_tokenizer_with_a_small_vocabulary_follows_the_weights(tmp_path):
    # 4 specials leave room for 4 characters. By raw counts the digits source (larger) would win
    # "1" and "2"; weighted 3 : 1 per source, the letters and the space do.
    data = mixture_config(tmp_path, "data.tokenizer=char", "data.vocab_size=8")
    tokenizer = prepare_training_data(data, **QUIET).tokenizer
    assert {"a", "b", "c", " "} <= set(tokenizer.decode(list(range(tokenizer.vocabulary_size))))


def test_a_mixture_of_one_is_exactly_its_source(tmp_path):
    latin, _ = write_sources(tmp_path / "data")
    cache = f'data.cache_dir="{tmp_path / "cache"}"'
    mixed = prepare_training_data(load_config("default", [f'data.sources=[{{dataset = "{latin}"}}]', cache]).data, **QUIET)
    single = prepare_lm_data(load_config("default", [f'data.dataset="{latin}"', cache]).data, **QUIET)
    assert mixed.store.directory == single.store.directory
    np.testing.assert_array_equal(
        batches(lm_dataset(mixed.train_ids, 16, 4, seed=9), 5), batches(lm_dataset(single.train_ids, 16, 4, seed=9), 5)
    )


def test_a_missing_source_is_named_before_any_source_is_read(tmp_path):
    data = mixture_config(tmp_path, f'data.sources[1].dataset="{tmp_path / "nope.txt"}"')
    with pytest.raises(DataError, match=r"^data.sources\[1\].dataset = '.*nope.txt': .*no such file"):
        prepare_training_data(data, **QUIET)
    assert not (tmp_path / "cache").exists()  # nothing tokenized, not even source 0


def test_the_prepare_command_builds_every_store_of_a_mixture_recipe(tmp_path, capsys):
    from kerasllm.errors import ConfigError
    from kerasllm.recipes.prepare import main

    latin, digits = write_sources(tmp_path / "data")
    recipe = tmp_path / "mix.toml"
    recipe.write_text(f'[data]\ncache_dir = "{tmp_path / "cache"}"\nnum_proc = 1\n\n'
                      f'[[data.sources]]\ndataset = "{latin}"\n\n[[data.sources]]\ndataset = "{digits}"\nweight = 2\n')
    main(["--recipe", str(recipe)])
    stores = [line for line in capsys.readouterr().out.splitlines() if line.startswith("token store:")]
    assert len(stores) == 2 and all(str(tmp_path / "cache") in line for line in stores)
    with pytest.raises(ConfigError, match="data.dataset = .* and 2 \\[\\[data.sources\\]\\] are both set"):
        main(["--recipe", str(recipe), "--data", str(latin)])
