"""Accelerators the planner knows, and a matmul meter for the machine it runs on.

Peak numbers are dense (no structured sparsity) per chip, from the vendors' datasheets cited
beside each entry. `float32` is the rate a float32 matmul really runs at under the default
framework settings: TF32 tensor cores on NVIDIA Ampere/Hopper (TensorFlow and JAX enable TF32
for float32 matmuls by default), and one bfloat16 pass on TPUs (XLA's default matmul precision).
"""

import dataclasses
import functools
import os
import re
import statistics
import time

from kerasllm.errors import ConfigError

GB = 1e9
GiB = 2**30
TERA = 1e12


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One accelerator (or host CPU) kind.

    Attributes:
        name: short name used on the command line (`8xH100`).
        peak_flops: dense peak FLOP/s per chip for each compute dtype ("float32", "bfloat16",
            "float16").
        memory_bytes: accelerator memory per chip.
        default_mfu: model FLOPs utilization assumed when none is given: 0.4 for accelerators
            (well-tuned LLM pretraining reaches 0.4-0.55: PaLM 46%, MegaScale 55%); measured here
            for the CPU (see `benchmarks/RESULTS.md`, "Planning").
        per_host: chips per host (tensor parallelism stays inside a host's fast interconnect).
        source: where the numbers come from.
    """

    name: str
    peak_flops: dict
    memory_bytes: float
    default_mfu: float
    per_host: int
    source: str

    def peak(self, dtype):
        """Peak FLOP/s of a matmul in `dtype` ("float32", "bfloat16" or "float16")."""
        if dtype not in self.peak_flops:
            raise ConfigError(f"hardware {self.name}: no peak for dtype {dtype!r}; known: {', '.join(self.peak_flops)}")
        return self.peak_flops[dtype]


HARDWARE = {
    # NVIDIA H100 SXM5 80GB datasheet (nvidia.com/en-us/data-center/h100, "H100 SXM" column):
    # TF32 989 TFLOPS and BF16/FP16 1,979 TFLOPS are *with sparsity*; dense is half: 494.5 / 989.5.
    # GPU memory 80 GB HBM3.
    "H100": Hardware("H100", {"float32": 494.5 * TERA, "bfloat16": 989.5 * TERA, "float16": 989.5 * TERA},
                     80 * GB, 0.4, 8, "NVIDIA H100 SXM datasheet (dense = sparse / 2)"),
    # NVIDIA A100 80GB SXM datasheet (nvidia.com/en-us/data-center/a100): TF32 156 TFLOPS,
    # BF16/FP16 312 TFLOPS (dense), 80 GB HBM2e.
    "A100": Hardware("A100", {"float32": 156 * TERA, "bfloat16": 312 * TERA, "float16": 312 * TERA},
                     80 * GB, 0.4, 8, "NVIDIA A100 80GB SXM datasheet"),
    # Google Cloud TPU v4 (cloud.google.com/tpu/docs/v4): 275 TFLOPS bf16 per chip, 32 GiB HBM2.
    "TPUv4": Hardware("TPUv4", {"float32": 275 * TERA, "bfloat16": 275 * TERA},
                      32 * GiB, 0.4, 4, "cloud.google.com/tpu/docs/v4"),
    # Google Cloud TPU v5e (cloud.google.com/tpu/docs/v5e): 197 TFLOPS bf16 per chip, 16 GiB HBM2.
    "TPUv5e": Hardware("TPUv5e", {"float32": 197 * TERA, "bfloat16": 197 * TERA},
                       16 * GiB, 0.4, 8, "cloud.google.com/tpu/docs/v5e"),
    # Google Cloud TPU v5p (cloud.google.com/tpu/docs/v5p): 459 TFLOPS bf16 per chip, 95 GiB HBM2e.
    "TPUv5p": Hardware("TPUv5p", {"float32": 459 * TERA, "bfloat16": 459 * TERA},
                       95 * GiB, 0.4, 4, "cloud.google.com/tpu/docs/v5p"),
}

_ALIASES = {
    "h100": "H100", "a100": "A100", "v4": "TPUv4", "tpuv4": "TPUv4", "tpu-v4": "TPUv4",
    "v5e": "TPUv5e", "tpuv5e": "TPUv5e", "tpu-v5e": "TPUv5e", "v5p": "TPUv5p", "tpuv5p": "TPUv5p",
    "tpu-v5p": "TPUv5p", "cpu": "CPU",
}

# MFU of our Keras training step on a 2-core AVX-512 CPU (model FLOP/s / ~300 GFLOP/s fp32
# matmul peak; step times in benchmarks/RESULTS.md, "Machine facts the code relies on"):
# nanoGPT's CPU config 40-88 ms/step -> 0.15-0.33; baby GPT 1.3-1.4 s/step -> ~0.5. Small models
# sit lower; pass a measured --mfu (benchmarks/plan_vs_measured.py) for a precise estimate.
CPU_DEFAULT_MFU = 0.30


@functools.lru_cache(maxsize=None)
def measure_peak_flops(dtype="float32", n=2048, repeats=5):
    """Measured matmul FLOP/s of this machine's CPU in TensorFlow (cached per process).

    Times `repeats` compiled `n x n` matmuls after one warm-up call and returns the median rate
    `2 n^3 / seconds`. This is the practical peak a Keras model can approach on this host, the
    denominator of model FLOPs utilization (MFU).

    Args:
        dtype: "float32", "bfloat16" or "float16".
        n: matrix size; 2048 or more reaches the plateau (smaller sizes under-report).
        repeats: timed calls; the median is returned.

    Returns:
        FLOP/s as a float.

    Examples:

    >>> peak = measure_peak_flops("float32", n=256, repeats=2)
    >>> peak > 1e8
    True
    """
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype="float32", seed=1)
    b = tf.random.normal((n, n), dtype="float32", seed=2)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)

    @tf.function
    def matmul(x, y):
        return tf.reduce_sum(tf.cast(tf.matmul(x, y), "float32"))  # a scalar: no big copy back

    matmul(a, b).numpy()  # trace + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def cpu_memory_bytes():
    """Physical memory of this host."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * GiB


def cpu_hardware(measure=True):
    """This host's CPU as a `Hardware` entry; peaks come from `measure_peak_flops`."""
    if measure:
        peaks = {"float32": measure_peak_flops("float32"), "bfloat16": measure_peak_flops("bfloat16")}
        source = "measured here by kerasllm.plan.hardware.measure_peak_flops (TF matmul, n=2048, median)"
    else:  # nominal, for offline planning: a 2-core AVX-512 CPU's TF matmul peak is 280-310
        # GFLOP/s in float32 and ~60 in bfloat16 (no bfloat16 hardware: emulated, 5x slower)
        peaks = {"float32": 300e9, "bfloat16": 60e9}
        source = "nominal 2-core AVX-512 host (not measured)"
    return Hardware("CPU", peaks, cpu_memory_bytes(), CPU_DEFAULT_MFU, 1, source)


def get_hardware(name, measure_cpu=True):
    """The `Hardware` entry for `name` (case-insensitive: H100, A100, TPUv4, v5e, v5p, CPU)."""
    key = _ALIASES.get(name.lower().replace("_", "-"), name)
    if key == "CPU":
        return cpu_hardware(measure=measure_cpu)
    if key not in HARDWARE:
        raise ConfigError(
            f"--devices: unknown hardware {name!r}; expected one of {', '.join([*HARDWARE, 'CPU'])}"
        )
    return HARDWARE[key]


def parse_devices(text, measure_cpu=True):
    """Parses `"8xH100"` (or `"H100"`, `"64 x v5p"`) into `(count, Hardware)`."""
    match = re.fullmatch(r"\s*(?:(\d+)\s*[xX*]\s*)?([A-Za-z][\w-]*)\s*", str(text))
    if not match:
        raise ConfigError(f"--devices {text!r}: expected COUNTxNAME, e.g. 8xH100 or 1xCPU")
    count = int(match.group(1) or 1)
    if count < 1:
        raise ConfigError(f"--devices {text!r}: the device count must be at least 1")
    return count, get_hardware(match.group(2), measure_cpu=measure_cpu)
