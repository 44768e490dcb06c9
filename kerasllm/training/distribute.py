"""Where training runs: a `tf.distribute` strategy (TF) or a `keras.distribution` (JAX).

The same recipe runs on one CPU, several GPUs, several machines or a TPU by changing
`train.strategy` only: the model, optimizer and metrics are built in `Placement.scope()`,
`train.batch_size` is the global batch and Keras splits each batch across the replicas.
On the JAX backend `plan.layout` (with `train.model_parallel`) also picks how the weights are
sharded over the devices: replicated, FSDP, tensor parallel or both.
"""

import contextlib
import dataclasses
import json
import os

import keras

from kerasllm.config import check_value, choices_of, layout_problem
from kerasllm.errors import ConfigError

STRATEGIES = choices_of("train.strategy")  # ("auto", "default", "one_device", "mirrored", ...)
LAYOUTS = choices_of("plan.layout")  # ("auto", "data", "fsdp", "tensor", "fsdp+tensor")


@dataclasses.dataclass
class Placement:
    """The resolved strategy: `kind` (e.g. "mirrored"), replica count and how to enter it."""

    kind: str
    replicas: int
    strategy: object = None  # a tf.distribute.Strategy (TF backend)
    distribution: object = None  # a keras.distribution.Distribution (JAX backend)
    on_cpu: bool = True
    is_chief: bool = True
    worker_index: int = 0

    def scope(self):
        if self.strategy is not None:
            return self.strategy.scope()
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext()

    def fit_scope(self):
        """The scope `fit` and `evaluate` run in.

        Keras on JAX splits each batch over the mesh's `"batch"` axis, and keeps the planned
        weight shardings through the jitted step, only while a `keras.distribution` is active;
        a tf.distribute strategy is captured by the model when it is created, so TensorFlow
        needs nothing here.
        """
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext()

    def describe(self):
        where = "CPU" if self.on_cpu else "accelerators"
        return f"strategy {self.kind} with {self.replicas} replica{'s' * (self.replicas != 1)} on {where}"


def count_gpus():
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def tf_config_workers():
    """`(worker count, this worker's index)` from the `TF_CONFIG` environment variable."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0, 0
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {error}") from None
    cluster = spec.get("cluster", {})
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    task = spec.get("task", {})
    index = task.get("index", 0) + (len(cluster.get("chief", [])) if task.get("type") == "worker" else 0)
    return workers, index


def _tpu_strategy(log):
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log(f"strategy: no TPU found ({reason}); falling back to the default strategy")
        return None
    return tf.distribute.TPUStrategy(resolver)


def resolve_placement(kind="auto", model_config=None, model_parallel=1, log=print, layout="auto"):
    """Builds the strategy `train.strategy` names, sharded as `plan.layout` says.

    `auto` picks TPUStrategy when a TPU is configured (`TPU_NAME`) and its resolver succeeds,
    MultiWorkerMirroredStrategy when `TF_CONFIG` names several workers, MirroredStrategy for
    more than one GPU, and the default strategy otherwise. `mirrored` without GPUs mirrors over
    the logical CPU devices. On the JAX backend the `keras.distribution` API is used instead,
    over all devices, as `layout` says (`kerasllm.plan.sharding.make_distribution`):

    - "data": `DataParallel` (weights replicated; `model_parallel` must be 1);
    - "fsdp": `ModelParallel` on a `(n, 1)` mesh, every matrix split along `"batch"`
      (`model_parallel` must be 1);
    - "tensor": `ModelParallel` on a `(n / model_parallel, model_parallel)` mesh, matrices
      split along `"model"` only;
    - "fsdp+tensor": the same mesh, matrices split along both axes;
    - "auto": "fsdp+tensor" when `model_parallel > 1`, else "data".

    Must be called before TensorFlow runs any op when `TF_CONFIG` is set (multi-worker).

    Args:
        kind: `train.strategy`, one of `STRATEGIES`.
        model_config: a `kerasllm.config.ModelConfig` with its vocabulary size set (JAX
            sharded layouts).
        model_parallel: `train.model_parallel`, the size of the `"model"` mesh axis (JAX).
        log: function printing progress lines.
        layout: `plan.layout`, one of `LAYOUTS`; the TensorFlow strategies are data
            parallel, so there only "auto" and "data" are accepted.

    Returns:
        A `Placement`.

    Raises:
        ConfigError: an unknown strategy or layout, or one the backend, device count or
            `train.model_parallel` cannot run.
    """
    check_value("train.strategy", kind)
    check_value("plan.layout", layout)
    check_value("train.model_parallel", model_parallel)
    if keras.backend.backend() == "jax":
        return _jax_placement(kind, model_config, model_parallel, log, layout)
    _check_tensorflow_layout(layout, model_parallel)
    return _tf_placement(kind, log)


def _check_tensorflow_layout(layout, model_parallel):
    """The tf.distribute strategies replicate the weights: no sharded layout, no model axis."""
    if layout not in ("auto", "data"):
        raise ConfigError(
            f"plan.layout = {layout!r}: sharded layouts need the JAX backend (KERAS_BACKEND=jax); "
            "use 'auto' or 'data' with TensorFlow"
        )
    if model_parallel != 1:
        raise ConfigError(
            f"train.model_parallel = {model_parallel}: model parallelism needs the JAX backend "
            "(KERAS_BACKEND=jax); use 1 with TensorFlow"
        )


def _tf_placement(kind, log):
    """The tf.distribute strategy `kind` names (`auto` resolved) and where it runs."""
    gpus = count_gpus()
    workers, worker_index = tf_config_workers()
    kind, strategy = _resolve_tf_kind(kind, gpus, workers, log)
    if strategy is None:
        strategy = _tf_strategy(kind, gpus, workers, log)
    return Placement(
        kind, strategy.num_replicas_in_sync, strategy=strategy, on_cpu=gpus == 0 and kind != "tpu",
        is_chief=kind != "multi_worker" or worker_index == 0, worker_index=worker_index,
    )


def _resolve_tf_kind(kind, gpus, workers, log):
    """`kind` with "auto" decided and an unreachable TPU fallen back to "default", and the TPU
    strategy when one was connected (`(kind, strategy or None)`)."""
    if kind not in ("auto", "tpu"):
        return kind, None
    tpu = _tpu_strategy(log) if kind == "tpu" or os.environ.get("TPU_NAME") else None
    if tpu is not None:
        return "tpu", tpu
    if kind == "tpu":
        return "default", None
    return ("multi_worker" if workers > 1 else "mirrored" if gpus > 1 else "default"), None


def _tf_strategy(kind, gpus, workers, log):
    import tensorflow as tf

    if kind == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if kind == "mirrored":
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == "multi_worker":
        if workers < 2:
            log("strategy: multi_worker without a TF_CONFIG naming several workers runs as one worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _check_layout(layout, model_parallel, kind):
    problem = layout_problem(layout, model_parallel, kind)  # the rule `Config.validate` applies
    if problem:
        raise ConfigError(problem)


def _jax_placement(kind, model_config, model_parallel, log, layout="auto"):
    _check_layout(layout, model_parallel, kind)
    devices = keras.distribution.list_devices()
    on_cpu = all(d.lower().startswith("cpu") for d in devices)
    if kind in ("default", "one_device") or (len(devices) == 1 and model_parallel == 1):
        return Placement(kind if kind != "auto" else "default", 1, on_cpu=on_cpu)
    if kind in ("multi_worker", "tpu"):
        log(f"strategy: {kind} is a tf.distribute strategy; on JAX, keras.distribution spans all "
            f"{len(devices)} devices jax.distributed sees")
    if len(devices) % model_parallel:
        raise ConfigError(
            f"train.model_parallel = {model_parallel} does not divide the {len(devices)} devices"
        )
    from kerasllm.plan.sharding import make_distribution

    strategy = layout if layout != "auto" else "fsdp+tensor" if model_parallel > 1 else "data"
    distribution = make_distribution(model_config, strategy, model_parallel, devices)
    if strategy == "data":
        return Placement("data_parallel", len(devices), distribution=distribution, on_cpu=on_cpu)
    data = len(devices) // model_parallel
    # "auto" keeps the name it had before plan.layout was honoured (logs and metrics.json).
    name = "model_parallel" if layout == "auto" else strategy
    return Placement(
        f"{name} ({data} data x {model_parallel} model)", data, distribution=distribution, on_cpu=on_cpu,
    )


def resolve_jit(jit_compile, placement, log=print):
    """`jit_compile`, turned off where XLA cannot run the strategy: MirroredStrategy over
    CPU devices fails with "Trying to access resource ... located in device CPU:1"."""
    mirrored = placement.kind in ("mirrored", "multi_worker") and placement.strategy is not None
    if jit_compile and mirrored and placement.on_cpu and placement.replicas > 1:
        log(f"jit_compile: off under {placement.kind} on CPU devices (XLA cannot place the "
            "replicas' variables there)")
        return False
    return jit_compile
