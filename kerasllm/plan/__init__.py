"""Planning: exact parameters, FLOPs, memory, time and sharding of a training run.

    from kerasllm.plan import count_params, flops_per_token, measure_peak_flops, plan
    from kerasllm.models.presets import get_preset

    print(plan(get_preset("llama-7b"), devices="8xH100", tokens=1e12).format())

Modules: `params` (exact weight shapes and counts), `flops`, `memory`, `hardware` (datasheet
peaks and the CPU meter), `planner` (layout recommendation and time), `sharding`
(`keras.distribution` layouts for the JAX backend).
"""

from kerasllm.plan.flops import flops_per_token, training_flops
from kerasllm.plan.hardware import HARDWARE, get_hardware, measure_peak_flops, parse_devices
from kerasllm.plan.memory import activation_bytes_per_token, inference_memory, kv_cache_bytes, training_memory
from kerasllm.plan.params import count_params, weight_shapes
from kerasllm.plan.planner import Plan, plan

__all__ = [
    "HARDWARE", "Plan", "activation_bytes_per_token", "count_params", "flops_per_token", "get_hardware",
    "inference_memory", "kv_cache_bytes", "measure_peak_flops", "parse_devices", "plan", "training_flops",
    "training_memory", "weight_shapes",
]
