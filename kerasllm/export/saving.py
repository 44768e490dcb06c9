"""Writing serving modules in TF Serving's layout: `BASE/NAME/<version>/`, atomically."""

import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from kerasllm.errors import RunError
from kerasllm.export.graph import non_core_ops, saved_op_types

README_FILE = "README.txt"


def next_version(base_dir):
    """1 + the largest integer-named folder in `base_dir` (1 when there is none)."""
    base_dir = Path(base_dir)
    versions = [int(p.name) for p in base_dir.iterdir() if p.is_dir() and p.name.isdigit()] if base_dir.is_dir() else []
    return max(versions, default=0) + 1


def save_module(server, export_dir):
    """`tf.saved_model.save` of a serving module with its signatures."""
    tf.saved_model.save(server, str(export_dir), signatures=server.signatures())


def describe_signatures(server):
    """Lines documenting each signature's inputs and outputs with dtypes and shapes."""
    signatures = server.signatures()
    lines = []
    for name, function in signatures.items():
        same = [other for other, f in signatures.items() if f is function and other != name]
        lines.append(f"signature {name!r}" + (f" (the same function as {same[0]!r})" if same else ""))
        for spec in function.input_signature:
            lines.append(f"  input  {spec.name:<16} {spec.dtype.name:<8} {_shape(spec.shape)}")
        outputs = function.get_concrete_function().structured_outputs
        for key, tensor in sorted(outputs.items()):
            lines.append(f"  output {key:<16} {tensor.dtype.name:<8} {_shape(tensor.shape)}")
    return lines


def example_call(server):
    """A Python call of the first named (non-default) signature, with TensorFlow only."""
    name, function = [(n, f) for n, f in server.signatures().items() if n != "serving_default"][0]
    examples = {tf.string: "['Hello']", tf.float32: "0.0", tf.int32: "16"}
    by_name = {"top_k": "0", "top_p": "1.0", "seed": "0"}  # values every input accepts
    args = []
    for spec in function.input_signature:
        value = by_name.get(spec.name, examples[spec.dtype]) if spec.shape.rank != 2 else "[[5, 6, 7]]"
        args.append(f"{spec.name}=tf.constant({value})")
    return f"m = tf.saved_model.load(PATH); m.signatures[{name!r}]({', '.join(args)})"


def _shape(shape):
    if shape.rank == 0:
        return "scalar"
    return "[" + ", ".join("batch" if i == 0 and d is None else ("time" if d is None else str(d))
                           for i, d in enumerate(shape.as_list())) + "]"


def write_readme(server, export_dir):
    export_dir = Path(export_dir)
    extra = non_core_ops(saved_op_types(export_dir))
    runtime = (
        f"tensorflow plus tensorflow-text ops {', '.join(extra)} (in Python: import tensorflow_text "
        "before loading; the tensorflow/serving image links them)"
        if extra else "tensorflow only"
    )
    lines = [
        "kerasllm SavedModel for TensorFlow Serving",
        "",
        *server.describe(),
        f"runtime: {runtime}; no kerasllm or keras-hub needed",
        "",
        *describe_signatures(server),
        "",
        f"Python: {example_call(server)}",
    ]
    (export_dir / README_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def export_versioned(server, base_dir, version=None, log=print):
    """Writes `server` to `base_dir/<version>/` so that the version folder appears complete or not at all.

    The SavedModel and README are written into a hidden temporary folder beside the version
    folder (TF Serving ignores names that are not integers) and renamed into place at the end;
    an error or interrupt removes the temporary folder.

    Args:
        server: a `LanguageModelServer` or `ClassifierServer`.
        base_dir: the model's base path (TF Serving's `--model_base_path`).
        version: the version number; `None` takes the next free one.
        log: progress printer.

    Returns:
        The `Path` of the version folder.
    """
    base_dir = Path(base_dir)
    try:
        base_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"--output {base_dir}: cannot create the export folder ({error.strerror or error})") from None
    version = next_version(base_dir) if version is None else version
    if not isinstance(version, int) or version < 1:
        raise RunError(f"--version {version}: expected a positive integer")
    final = base_dir / str(version)
    if final.exists():
        raise RunError(f"{final} already exists; pass another --version or leave it out for the next free one")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir))
    except OSError as error:
        raise RunError(f"--output {base_dir}: cannot write there ({error.strerror or error})") from None
    try:
        save_module(server, staging)
        write_readme(server, staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; a model server may run as another user
        os.rename(staging, final)  # atomic within one file system; fails if `final` appeared meanwhile
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if final.exists():
            raise RunError(
                f"{final}: written by another export meanwhile; run again for the next free version"
            ) from None
        raise RunError(f"{final}: cannot be written ({error.strerror or error})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"exported {final}")
    return final
