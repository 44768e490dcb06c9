"""The CLIs start quietly: `--help` loads no TensorFlow, and a run prints its own lines only.

TensorFlow 2.21 writes 6-9 lines of C++ logging while it loads, which `TF_CPP_MIN_LOG_LEVEL`
does not silence; `kerasllm.recipes.cli.run_cli` drops exactly those and passes anything else
on (everything, when the import fails). Each subprocess here runs with the environment a user
has: no `TF_CPP_MIN_LOG_LEVEL`, no `KERASLLM_VERBOSE`.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = ["pretrain", "finetune", "generate", "evaluate", "export", "plan"]

NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796161082.515974    6621 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1796161082.516527    6621 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
    "I0000 00:00:1796161198.471590   11539 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.\n"
    "E0000 00:00:1796161668.227289   29244 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
)
REAL = "W0000 00:00:1796161668.3 29244 op_kernel.cc:1857] OP_REQUIRES failed: a real warning\n"


def user_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERASLLM_VERBOSE")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run_python(code, *args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True, text=True, env=env or user_env(), timeout=timeout, cwd=REPO_ROOT,
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_help_is_quiet_and_loads_no_tensorflow(recipe):
    result = run_python(
        """
        import json, runpy, sys
        module = "kerasllm.recipes." + sys.argv[1]
        sys.argv = [module, "--help"]
        try:
            runpy.run_module(module, run_name="__main__")
        except SystemExit as stop:
            code = stop.code
        heavy = sorted(m for m in ("tensorflow", "keras", "keras_hub", "jax") if m in sys.modules)
        print(json.dumps({"code": code, "heavy": heavy}))
        """,
        recipe,
    )
    assert result.stderr == "", result.stderr
    assert result.stdout.startswith(f"usage: python -m kerasllm.recipes.{recipe}")
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"code": 0, "heavy": []}


def fake_tensorflow(root, stderr_text, fail=False):
    """A `tensorflow` package that writes `stderr_text` to file descriptor 2 while it loads."""
    package = root / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(f"""
        import os, types
        os.write(2, {stderr_text.encode()!r})
        if {fail!r}:
            raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
        config = types.SimpleNamespace(list_physical_devices=lambda: [])
        """))
    return user_env(PYTHONPATH=os.pathsep.join([str(root), str(REPO_ROOT)]))


MAIN = """
    import sys
    from kerasllm.recipes.cli import run_cli

    def main(argv):
        print("first own line", file=sys.stderr)
        import tensorflow
        print("tensorflow", tensorflow.__file__ is not None)

    run_cli(main)
    """


def test_start_up_noise_is_dropped_and_anything_else_passed_on(tmp_path):
    result = run_python(MAIN, env=fake_tensorflow(tmp_path, NOISE + REAL))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "first own line\n" + REAL
    assert result.stdout == "tensorflow True\n"


def test_a_failed_tensorflow_import_shows_everything_it_wrote(tmp_path):
    result = run_python(MAIN, env=fake_tensorflow(tmp_path, NOISE, fail=True))
    assert result.returncode == 1
    assert result.stderr.startswith("first own line\n" + NOISE)
    assert "ImportError: libtensorflow_framework.so.2" in result.stderr


@pytest.mark.parametrize("how", ["env", "flag"])
def test_verbose_shows_tensorflow_start_up_messages(tmp_path, how):
    code = """
        import argparse, os
        from kerasllm.recipes.cli import add_verbose_flag, run_cli

        def main(argv):
            add_verbose_flag(argparse.ArgumentParser()).parse_args(argv)
            import tensorflow
            print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"))

        run_cli(main, ["--verbose"] if os.environ.get("HOW") == "flag" else [])
        """
    env = fake_tensorflow(tmp_path, NOISE, fail=False)
    env.update({"HOW": how, **({"KERASLLM_VERBOSE": "1"} if how == "env" else {})})
    result = run_python(code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == NOISE
    assert result.stdout == "None\n"  # TensorFlow's own log level, not kerasllm's default


@pytest.mark.slow
def test_plan_with_real_tensorflow_prints_its_own_lines_only():
    result = subprocess.run(
        [sys.executable, "-m", "kerasllm.recipes.plan", "--preset", "gpt2-124m-tiny", "--tokens", "1M"],
        capture_output=True, text=True, env=user_env(), timeout=300, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("plan: gpt2-124m-tiny on 1xCPU")


@pytest.mark.slow
def test_tiny_pretrain_prints_its_own_lines_only(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    sets = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
            "train.batch_size=4", "train.max_steps=2", "train.eval_interval=2", "train.eval_steps=1",
            "train.warmup_steps=1", "train.jit_compile=false", "sample.max_new_tokens=5"]
    result = subprocess.run(
        [sys.executable, "-m", "kerasllm.recipes.pretrain", "--data", str(corpus), "--output",
         str(tmp_path / "run"), *[arg for s in sets for arg in ("--set", s)]],
        capture_output=True, text=True, env=user_env(), timeout=600, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert result.stdout.startswith("kerasllm: recipe 'default' ->")


@pytest.mark.slow  # a subprocess CLI run: the quick loop keeps one of this kind
def test_loading_the_training_package_still_registers_the_models():
    """`kerasllm.models` imports GPT and the LSTM lazily; `load_run` must still find them."""
    result = run_python(
        """
        import keras
        import kerasllm.training
        print(all(keras.saving.get_registered_object(f"kerasllm>{name}") is not None
                  for name in ("GPT", "LSTMLanguageModel", "CausalSelfAttention")))
        """
    )
    assert result.stdout.strip().splitlines()[-1] == "True", result.stderr[-2000:]
