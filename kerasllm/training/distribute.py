"""Where training runs: a `tf.distribute` strategy (TF) or a `keras.distribution` (JAX).

The same recipe runs on one CPU, several GPUs, several machines or a TPU by changing
`train.strategy` only: the model, optimizer and metrics are built in `Placement.scope()`,
`train.batch_size` is the global batch and Keras splits each batch across the replicas.
"""

import contextlib
import dataclasses
import json
import os

import keras

from kerasllm.errors import ConfigError

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")


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


def resolve_placement(kind="auto", model_config=None, model_parallel=1, log=print):
    """Builds the strategy `train.strategy` names (see the module docstring).

    `auto` picks TPUStrategy when a TPU is configured (`TPU_NAME`) and its resolver succeeds,
    MultiWorkerMirroredStrategy when `TF_CONFIG` names several workers, MirroredStrategy for
    more than one GPU, and the default strategy otherwise. `mirrored` without GPUs mirrors over
    the logical CPU devices. On the JAX backend the `keras.distribution` API is used instead:
    `DataParallel` over all devices, or `ModelParallel` with `kerasllm.plan.sharding`'s layout
    map when `model_parallel > 1`.

    Must be called before TensorFlow runs any op when `TF_CONFIG` is set (multi-worker).
    """
    if kind not in STRATEGIES:
        raise ConfigError(f"train.strategy = {kind!r}: expected one of {', '.join(STRATEGIES)}")
    if keras.backend.backend() == "jax":
        return _jax_placement(kind, model_config, model_parallel, log)
    if model_parallel != 1:
        raise ConfigError(
            f"train.model_parallel = {model_parallel}: model parallelism needs the JAX backend "
            "(KERAS_BACKEND=jax); use 1 with TensorFlow"
        )
    import tensorflow as tf

    gpus = count_gpus()
    workers, worker_index = tf_config_workers()
    if kind == "auto":
        strategy = _tpu_strategy(log) if os.environ.get("TPU_NAME") else None
        if strategy is not None:
            kind = "tpu"
        elif workers > 1:
            kind = "multi_worker"
        elif gpus > 1:
            kind = "mirrored"
        else:
            kind = "default"
    elif kind == "tpu":
        strategy = _tpu_strategy(log)
        if strategy is None:
            kind = "default"
    if kind == "default":
        strategy = tf.distribute.get_strategy()
    elif kind == "one_device":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    elif kind == "mirrored":
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    elif kind == "multi_worker":
        if workers < 2:
            log("strategy: multi_worker without a TF_CONFIG naming several workers runs as one worker")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    is_chief = kind != "multi_worker" or worker_index == 0
    return Placement(
        kind, strategy.num_replicas_in_sync, strategy=strategy, on_cpu=gpus == 0 and kind != "tpu",
        is_chief=is_chief, worker_index=worker_index,
    )


def _jax_placement(kind, model_config, model_parallel, log):
    devices = keras.distribution.list_devices()
    on_cpu = all(d.lower().startswith("cpu") for d in devices)
    if kind in ("default", "one_device") or (len(devices) == 1 and model_parallel == 1):
        return Placement(kind if kind != "auto" else "default", 1, on_cpu=on_cpu)
    if kind in ("multi_worker", "tpu"):
        log(f"strategy: {kind} is a tf.distribute strategy; on JAX, keras.distribution spans all "
            f"{len(devices)} devices jax.distributed sees")
    if model_parallel > 1:
        if len(devices) % model_parallel:
            raise ConfigError(
                f"train.model_parallel = {model_parallel} does not divide the {len(devices)} devices"
            )
        from kerasllm.plan.sharding import BATCH, MODEL, layout_map

        mesh = keras.distribution.DeviceMesh(
            (len(devices) // model_parallel, model_parallel), (BATCH, MODEL), devices
        )
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map(model_config, mesh), batch_dim_name=BATCH
        )
        return Placement(
            f"model_parallel ({len(devices) // model_parallel} data x {model_parallel} model)",
            len(devices) // model_parallel, distribution=distribution, on_cpu=on_cpu,
        )
    distribution = keras.distribution.DataParallel(devices=devices)
    return Placement("data_parallel", len(devices), distribution=distribution, on_cpu=on_cpu)


def resolve_jit(jit_compile, placement, log=print):
    """`jit_compile`, turned off where XLA cannot run the strategy: MirroredStrategy over
    CPU devices fails with "Trying to access resource ... located in device CPU:1"."""
    mirrored = placement.kind in ("mirrored", "multi_worker") and placement.strategy is not None
    if jit_compile and mirrored and placement.on_cpu and placement.replicas > 1:
        log(f"jit_compile: off under {placement.kind} on CPU devices (XLA cannot place the "
            "replicas' variables there)")
        return False
    return jit_compile
