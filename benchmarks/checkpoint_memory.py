"""Peak memory of importing a Hugging Face checkpoint, against the size of its file.

    python benchmarks/checkpoint_memory.py [--layers 8] [--dtype float32] [--folder DIR]

Writes a random Llama-layout checkpoint (config.json + model.safetensors + a byte-level
tokenizer.json; 8 layers of width 1024 and a 32k vocabulary: ~675 MB in float32) unless
`--folder` already holds one, then loads it with `kerasllm.checkpoints.load_pretrained` in a
fresh process and reports that process's peak RSS before and after the load. The loader reads
one tensor at a time, so the load should add about one copy of the weights (the model's own
float32 variables) plus the largest tensor, not two copies.

Results go to benchmarks/checkpoint_memory.json.
"""

import argparse
import json
import resource
import subprocess
import sys
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


def measure(folder):
    """Runs in a fresh process: peak RSS (MB) after imports and after the load."""
    import keras  # noqa: F401 - count the frameworks in the baseline
    import tensorflow  # noqa: F401

    from kerasllm.checkpoints import load_pretrained

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    _, _, model = load_pretrained(folder)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    weights_mb = sum(int(np.prod(v.shape)) * 4 for v in model.weights) / 2**20
    print(json.dumps({"peak_rss_before_mb": round(before), "peak_rss_after_mb": round(after),
                      "model_float32_mb": round(weights_mb), "load_seconds": round(seconds, 1)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--folder", default="/tmp/kerasllm_checkpoint_memory")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder)
    if args.measure:
        return measure(folder)
    if not (folder / "model.safetensors").is_file():
        write_checkpoint(folder, args.layers, args.dtype)
    result = subprocess.run([sys.executable, __file__, "--measure", "--folder", str(folder)],
                            capture_output=True, text=True, check=True)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["file_mb"] = round((folder / "model.safetensors").stat().st_size / 2**20)
    row["added_by_load_mb"] = row["peak_rss_after_mb"] - row["peak_rss_before_mb"]
    row["added_over_file"] = round(row["added_by_load_mb"] / row["file_mb"], 2)
    row["command"] = "python benchmarks/checkpoint_memory.py " + " ".join(sys.argv[1:])
    print(json.dumps(row, indent=1))
    (HERE / "checkpoint_memory.json").write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
