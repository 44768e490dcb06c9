"""Planning: exact parameters, FLOPs, memory, time and sharding of a training run.

    from kerasllm.plan import count_params, flops_per_token, measure_peak_flops
"""

from kerasllm.plan.flops import flops_per_token, training_flops
from kerasllm.plan.hardware import HARDWARE, get_hardware, measure_peak_flops, parse_devices
from kerasllm.plan.params import count_params, weight_shapes

__all__ = [
    "HARDWARE", "count_params", "flops_per_token", "get_hardware", "measure_peak_flops",
    "parse_devices", "training_flops", "weight_shapes",
]
