"""Peak memory of importing a Hugging Face checkpoint, against the size of its file.

    python benchmarks/checkpoint_memory.py [--layers 8] [--dtype float32] [--folder DIR]

Writes a random Llama-layout checkpoint (config.json + model.safetensors + a byte-level
tokenizer.json; 8 layers of width 1024 and a 32k vocabulary: 594 MB in float32) into a
temporary folder (deleted afterwards; `--folder DIR` keeps it there and reuses one already
written), then loads it with `kerasllm.checkpoints.load_pretrained` in a fresh process and
reports that process's peak RSS after its imports and after the load. The model is built
without a random initialization and each variable is filled block by block into the buffer
that becomes its storage, so the load should add one copy of the weights (the model's own
float32 variables) plus at most one tensor, whatever the file's dtype.

Results go to benchmarks/checkpoint_memory.json, one entry per file dtype.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def write_checkpoint(folder, layers, dtype):
    from kerasllm.checkpoints.safetensors_io import write_safetensors
    from kerasllm.tokenizers.pretrained import PretrainedTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    C, F, V, H, K = 1024, 2816, 32000, 16, 4
    D = C // H
    config = {"model_type": "llama", "vocab_size": V, "hidden_size": C, "intermediate_size": F,
              "num_hidden_layers": layers, "num_attention_heads": H, "num_key_value_heads": K,
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "hidden_act": "silu"}
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    tensors = {"model.embed_tokens.weight": normal(V, C), "lm_head.weight": normal(V, C),
               "model.norm.weight": np.ones(C, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(C, np.float32),
            p + "post_attention_layernorm.weight": np.ones(C, np.float32),
            p + "self_attn.q_proj.weight": normal(H * D, C), p + "self_attn.k_proj.weight": normal(K * D, C),
            p + "self_attn.v_proj.weight": normal(K * D, C), p + "self_attn.o_proj.weight": normal(C, H * D),
            p + "mlp.gate_proj.weight": normal(F, C), p + "mlp.up_proj.weight": normal(F, C),
            p + "mlp.down_proj.weight": normal(C, F),
        })
    write_safetensors(tensors, folder / "model.safetensors", dtype)
    tokenizer = PretrainedTokenizer.train(["hello world"] * 10, vocab_size=300)
    (folder / "tokenizer.json").write_text(tokenizer.tokenizer_json)


def peak_rss_mb():
    # VmHWM restarts at exec; getrusage's ru_maxrss would carry the parent's peak over a fork.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(folder):
    """Runs in a fresh process: peak RSS (MB) after imports and after the load."""
    import keras_hub  # noqa: F401 - the frameworks and kerasllm's modules belong to the baseline
    import tensorflow  # noqa: F401

    import kerasllm.models  # noqa: F401
    import kerasllm.tokenizers  # noqa: F401
    from kerasllm.checkpoints import load_pretrained

    before = peak_rss_mb()
    start = time.perf_counter()
    _, _, model = load_pretrained(folder)
    seconds = time.perf_counter() - start
    after = peak_rss_mb()
    sizes = [int(np.prod(v.shape)) * 4 / 2**20 for v in model.weights]
    print(json.dumps({"peak_rss_before_mb": round(before), "peak_rss_after_mb": round(after),
                      "model_float32_mb": round(sum(sizes)), "largest_tensor_mb": round(max(sizes)),
                      "load_seconds": round(seconds, 1)}))


def run(folder, args):
    from kerasllm.checkpoints.safetensors_io import read_header

    if not (folder / "model.safetensors").is_file():
        write_checkpoint(folder, args.layers, args.dtype)
    # A fresh process: nothing of the writing counts.
    result = subprocess.run([sys.executable, __file__, "--measure", "--folder", str(folder)],
                            capture_output=True, text=True, check=True)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["file_mb"] = round((folder / "model.safetensors").stat().st_size / 2**20)
    row["file_dtype"] = read_header(folder / "model.safetensors")[0]["lm_head.weight"]["dtype"]
    row["added_by_load_mb"] = row["peak_rss_after_mb"] - row["peak_rss_before_mb"]
    row["added_over_model"] = round(row["added_by_load_mb"] / row["model_float32_mb"], 2)
    row["added_over_model_plus_largest"] = round(
        row["added_by_load_mb"] / (row["model_float32_mb"] + row["largest_tensor_mb"]), 2)
    row["command"] = "python benchmarks/checkpoint_memory.py " + " ".join(sys.argv[1:])
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--folder", help="keep the checkpoint here (default: a temporary folder)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(Path(args.folder))
    if args.folder:
        row = run(Path(args.folder), args)
    else:
        with tempfile.TemporaryDirectory(prefix="kerasllm_checkpoint_memory_") as folder:
            row = run(Path(folder), args)
    print(json.dumps(row, indent=1))
    results_path = HERE / "checkpoint_memory.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results[args.dtype] = row
    results_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
