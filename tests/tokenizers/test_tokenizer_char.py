import numpy as np
import tensorflow as tf

from kerasllm.tokenizers import CharTokenizer, load_tokenizer

TEXT = "def f(x):\n    return x * 2  # 红楼梦 🙂\n"


def test_round_trip_python_and_graph(tmp_path):
    tok = CharTokenizer.train([TEXT])
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == TEXT
    graph_ids = tok.tf_encode(tf.constant(TEXT))
    np.testing.assert_array_equal(graph_ids.numpy(), ids)
    assert tok.tf_decode(graph_ids).numpy().decode("utf-8") == TEXT
    batch = tok.tf_encode(tf.constant([TEXT, "rez"]))
    assert [s.decode() for s in tok.tf_decode(batch).numpy().tolist()] == [TEXT, "re" + "\ufffd"]
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    np.testing.assert_array_equal(again.encode(TEXT), ids)


def test_specials_and_unknown():
    tok = CharTokenizer.train(["abc"])
    assert [tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id] == [0, 1, 2, 3]
    assert tok.vocabulary_size == 7
    ids = tok.encode("abz")
    assert ids[-1] == tok.unk_id
    assert tok.decode(ids) == "ab\ufffd"
    assert tok.decode([tok.eos_id, 4]) == "a"
    assert tok.decode([tok.eos_id, 4], skip_special_tokens=False) == "<eos>a"


def test_vocab_size_keeps_most_frequent():
    tok = CharTokenizer.train(["aaaabbbc"], vocab_size=6)
    assert tok.vocabulary_size == 6
    assert tok.decode(tok.encode("abc")) == "ab\ufffd"
