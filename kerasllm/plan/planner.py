"""The planner: parameters, FLOPs, memory, time and a recommended layout for one training run.

    from kerasllm.plan.planner import plan
    from kerasllm.models.presets import get_preset
    print(plan(get_preset("llama-7b"), devices="8xH100", tokens=1e12).format())

Time to train is `total FLOPs / (devices x peak x MFU)`; with rematerialization the hardware also
recomputes each block's forward pass (2N of the 6N FLOPs per token), so the time is multiplied by
4/3 at the same utilization.
"""

import dataclasses
import math

from kerasllm.errors import ConfigError
from kerasllm.plan.flops import flops_per_token
from kerasllm.plan.hardware import parse_devices
from kerasllm.plan.memory import (
    PRECISIONS, check_optimizer, check_precision, inference_memory, training_memory,
)
from kerasllm.plan.params import count_params, head_dims

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022, Table 3: ~20 tokens per parameter
USABLE_MEMORY = 0.9  # leave 10% for the framework, workspace and fragmentation
STRATEGIES = ("data", "fsdp", "tensor", "fsdp+tensor")
_PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "bfloat16": "bfloat16", "mixed_float16": "float16"}
_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text, what="--tokens"):
    """`"1T"`, `"10B"`, `"300M"`, `"2.5e9"` -> a float."""
    raw = str(text).strip().lower().replace("_", "").replace(",", "")
    scale = _SUFFIXES.get(raw[-1:], 1) if raw else 1
    try:
        value = float(raw[:-1] if raw[-1:] in _SUFFIXES else raw) * scale
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected a number with an optional k/M/B/T suffix, e.g. 10B") from None
    if value <= 0:
        raise ConfigError(f"{what} {text!r}: expected a positive number")
    return value


def human(value, unit=""):
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def human_flops(value, unit="FLOP"):
    for suffix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {suffix}{unit}" if value < 1000 * 1e18 else f"{value:.3g} {unit}"
    return f"{value:.3g} {unit}"


def human_bytes(value):
    return f"{value / 2**30:.2f} GiB" if value >= 2**28 else f"{value / 2**20:.1f} MiB"


def human_time(seconds):
    for unit, scale in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.1f} s"


@dataclasses.dataclass
class Layout:
    """How the devices are used: a `(data_parallel, tensor_parallel)` mesh, FSDP or not."""

    strategy: str
    data_parallel: int
    tensor_parallel: int
    fsdp: bool


def layouts(devices, per_host, model_config):
    """The candidate layouts for `devices` chips, in order of preference (least communication first)."""
    out = [Layout("data", devices, 1, False)]
    if devices > 1:
        out.append(Layout("fsdp", devices, 1, True))
    tp = tensor_parallel_degree(devices, per_host, model_config)
    if tp > 1:
        out.append(Layout("tensor", devices // tp, tp, False))
        out.append(Layout("fsdp+tensor", devices // tp, tp, devices // tp > 1))
    return out


def tensor_parallel_degree(devices, per_host, model_config):
    """Largest tensor-parallel size within one host that divides the devices and the heads."""
    if model_config.arch != "gpt":
        return 1
    n_head, n_kv, _, _ = head_dims(model_config)
    for tp in range(min(devices, per_host), 1, -1):
        if devices % tp == 0 and n_head % tp == 0 and n_kv % tp == 0:
            return tp
    return 1


@dataclasses.dataclass
class Plan:
    """Everything the planner computed; `to_dict()` for JSON, `format()` for a table."""

    data: dict

    def to_dict(self):
        return self.data

    def __getitem__(self, key):
        return self.data[key]

    def format(self):
        d = self.data
        p, f, run, rec = d["parameters"], d["flops"], d["run"], d["recommendation"]
        lines = [f"plan: {d['model']['name']} on {run['devices']}x{run['hardware']}", ""]
        lines.append("parameters")
        for key in ("embeddings", "attention", "mlp", "norms", "head", "recurrent"):
            if p[key]:
                lines.append(f"  {key:<26}{p[key]:>16,}")
        lines.append(f"  {'total':<26}{p['total']:>16,}   ({human(p['total'])}; {p['compute']:,} in matmuls)")
        lines += ["", "compute"]
        lines.append(f"  {'training FLOPs/token':<26}{human_flops(f['train_per_token']):>16}   (6N + 12*L*T*d, T={run['seq_len']})")
        lines.append(f"  {'inference FLOPs/token':<26}{human_flops(f['inference_per_token']):>16}   (2N + 4*L*T*d)")
        lines.append(f"  {'tokens':<26}{human(run['tokens']):>16}   (Chinchilla-optimal {human(d['chinchilla_tokens'])})")
        lines.append(f"  {'total training FLOPs':<26}{human_flops(f['train_total']):>16}")
        lines += ["", f"memory per device at micro-batch {rec['micro_batch']} x {run['seq_len']} ({run['optimizer']}, "
                  f"{'flash' if run['flash_attention'] else 'materialized'} attention; {human_bytes(run['device_memory'])} "
                  f"per device, {int(USABLE_MEMORY * 100)}% usable)"]
        header = f"  {'layout':<13}{'precision':<16}{'states':>11}{'activations':>13}{'remat acts':>12}{'total':>11}{'remat total':>13}"
        lines.append(header)
        for row in d["memory"]:
            lines.append(
                f"  {row['strategy']:<13}{row['precision']:<16}{human_bytes(row['states']):>11}"
                f"{human_bytes(row['activations']):>13}{human_bytes(row['activations_remat']):>12}"
                f"{human_bytes(row['total']):>11}{human_bytes(row['total_remat']):>13}"
            )
        inf = d["inference"]
        lines.append(f"  inference ({run['precision']}, batch {inf['batch']} x {inf['context']}): weights "
                     f"{human_bytes(inf['weights'])} + KV cache {human_bytes(inf['kv_cache'])} per device (tensor-parallel {inf['tensor_parallel']})")
        lines += ["", "recommendation"]
        if rec["fits"]:
            lines.append(f"  strategy {rec['strategy']} (mesh batch={rec['data_parallel']} x model={rec['tensor_parallel']}), "
                         f"{run['precision']}, remat {'on' if rec['remat'] else 'off'}")
            lines.append(f"  global batch {run['global_batch']} x {run['seq_len']} = {human(run['global_batch'] * run['seq_len'])} tokens: "
                         f"micro-batch {rec['micro_batch']} per device x {rec['grad_accumulation']} accumulation steps "
                         f"x {rec['data_parallel']} data-parallel")
            lines.append(f"  memory {human_bytes(rec['memory']['total'])} of {human_bytes(run['device_memory'])} per device")
        else:
            lines.append(f"  does not fit: {rec['reason']}")
        lines += [f"  note: {note}" for note in d.get("notes", [])]
        t = d["time"]
        lines.append(f"  time {human_time(t['seconds'])} = {human_flops(f['train_total'])}"
                     f"{' x 4/3 (remat)' if rec.get('remat') else ''} / ({run['devices']} x {human_flops(t['peak_flops'], 'FLOP/s')} "
                     f"{_PEAK_DTYPE[run['precision']]} peak x MFU {t['mfu']:.2f}); {t['steps']:,} steps of "
                     f"{human_time(t['step_seconds'])}")
        lines.append(f"  peak source: {run['hardware_source']}")
        return "\n".join(lines)


@dataclasses.dataclass
class _Run:
    """The settings of one planned run, resolved: what every phase of `plan` reads."""

    config: object
    devices: int
    hardware: object
    seq_len: int
    precision: str
    optimizer: str
    flash: bool
    vocab_size: object
    tokens: float
    global_batch: int
    mfu: float
    counts: dict
    chinchilla: float

    @property
    def usable(self):
        return USABLE_MEMORY * self.hardware.memory_bytes

    def memory(self, lay, micro, use_remat, precision=None):
        return training_memory(self.config, micro, self.seq_len, precision or self.precision, self.optimizer,
                               lay.data_parallel, lay.tensor_parallel, lay.fsdp, use_remat, self.flash,
                               self.vocab_size)


def plan(model_config, devices="1xCPU", tokens=None, global_batch=None, seq_len=None, precision=None,
         optimizer="adamw", mfu=None, strategy="auto", remat="auto", micro_batch=0,
         flash_attention=None, vocab_size=None, inference_batch=1, name=None, measure_cpu=True,
         peak_flops=None):
    """Plans a training run.

    The phases: resolve the run's settings, list the layouts that can use every device, pick
    the first that fits in memory (or explain why none does), then time, memory table and
    inference estimate.

    Args:
        model_config: a `kerasllm.config.ModelConfig` (or a preset's).
        devices: `"8xH100"`, `"1xCPU"`, `"256xv5p"`, ... (see `kerasllm.plan.hardware`).
        tokens: training tokens; `None`: the Chinchilla-optimal 20 per parameter.
        global_batch: sequences per optimizer step (at least 1, and at least one per
            data-parallel device); `None`: 2^19 tokens' worth (at least 1).
        seq_len: training sequence length; `None`: `model_config.block_size`.
        precision: "float32", "mixed_bfloat16", "mixed_float16" or "bfloat16"; `None`:
            float32 on the CPU (it has no fast 16-bit matmul), mixed_bfloat16 elsewhere.
        optimizer: "adamw", "adam", "momentum" or "sgd".
        mfu: model FLOPs utilization; `None`: the hardware's default.
        strategy: "auto" or one of `STRATEGIES`.
        remat: "auto", True or False.
        micro_batch: sequences per device per pass; 0: the largest that fits.
        flash_attention: `None`: on for accelerators, off for the CPU.
        vocab_size: overrides `model_config.vocab_size`.
        inference_batch: batch of the KV-cache estimate.
        name: label for the output.
        measure_cpu: measure this CPU's peak (else a nominal figure).
        peak_flops: peak FLOP/s per device in the run's compute dtype, overriding the table.

    Returns:
        A `Plan`.

    Raises:
        ConfigError: a value out of range, or a global batch too small for every layout to
            give each data-parallel device a sequence.

    Examples:

    >>> from kerasllm.models.presets import get_preset
    >>> p = plan(get_preset("llama-7b"), devices="8xH100", tokens=1e12)
    >>> p["recommendation"]["strategy"], p["recommendation"]["fits"]
    ('fsdp', True)
    """
    check_counts(global_batch=global_batch, micro_batch=micro_batch, inference_batch=inference_batch,
                  vocab_size=vocab_size, peak_flops=peak_flops)
    count, hardware = parse_devices(devices, measure_cpu=measure_cpu)
    run = _resolve_run(model_config, count, hardware, tokens, global_batch, seq_len, precision, optimizer,
                       mfu, flash_attention, vocab_size)
    candidates, skipped = _candidate_layouts(run, strategy)
    recommendation = _recommend(run, candidates, remat, micro_batch)
    c, t = run.config, run.seq_len
    train_per_token = flops_per_token(c, t, True, vocab_size)
    tp = recommendation["tensor_parallel"]
    inference = dict(inference_memory(c, inference_batch, t, run.precision, tp, vocab_size),
                     batch=inference_batch, context=t, tensor_parallel=tp)
    return Plan(dict(
        model=dict(name=name or f"{c.arch} {c.n_layer}x{c.n_embd}", config=dataclasses.asdict(c)),
        parameters=run.counts,
        flops=dict(train_per_token=train_per_token,
                   inference_per_token=flops_per_token(c, t, False, vocab_size),
                   train_total=train_per_token * run.tokens),
        chinchilla_tokens=run.chinchilla,
        run=dict(devices=count, hardware=hardware.name, hardware_source=hardware.source,
                 device_memory=hardware.memory_bytes, tokens=run.tokens, global_batch=run.global_batch,
                 seq_len=t, precision=run.precision, optimizer=run.optimizer, flash_attention=run.flash),
        memory=_memory_rows(run, recommendation["micro_batch"]),
        inference=inference,
        recommendation=recommendation,
        time=_training_time(run, train_per_token * run.tokens, recommendation["remat"], peak_flops),
        notes=skipped,
    ))


def check_counts(**values):
    """Raises `ConfigError`, naming the flag, unless each count given to `plan` is positive
    (`micro_batch` may be 0: the largest that fits); `None` is the default and passes."""
    flags = dict(global_batch="--batch", micro_batch="--micro-batch", inference_batch="--inference-batch",
                 vocab_size="--vocab", peak_flops="--peak-flops")
    for key, value in values.items():
        lowest = 0 if key == "micro_batch" else 1
        kind = "number" if key == "peak_flops" else "integer"
        if value is not None and not value >= lowest:
            raise ConfigError(f"{flags[key]} {value}: expected {'0 or ' if lowest == 0 else ''}a positive {kind}")


def _resolve_run(c, count, hardware, tokens, global_batch, seq_len, precision, optimizer, mfu, flash_attention,
                 vocab_size):
    """Checks the settings and fills in the defaults that depend on the model and hardware."""
    t = c.block_size if seq_len is None else int(seq_len)
    if t <= 0 or (c.arch == "gpt" and c.positions == "learned" and t > c.block_size):
        raise ConfigError(f"--seq-len {t}: expected 1..{c.block_size} (model.block_size of a learned-position model)")
    on_cpu = hardware.name == "CPU"
    precision = precision or ("float32" if on_cpu else "mixed_bfloat16")
    check_precision(precision)
    check_optimizer(optimizer)
    if _PEAK_DTYPE[precision] not in hardware.peak_flops:
        raise ConfigError(f"precision {precision!r}: {hardware.name} has no {_PEAK_DTYPE[precision]} peak; use mixed_bfloat16")
    counts = count_params(c, vocab_size)
    chinchilla = CHINCHILLA_TOKENS_PER_PARAM * counts["total"]
    mfu = hardware.default_mfu if mfu is None else float(mfu)
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {mfu}: expected a fraction in (0, 1]")
    return _Run(
        config=c, devices=count, hardware=hardware, seq_len=t, precision=precision, optimizer=optimizer,
        flash=(not on_cpu) if flash_attention is None else bool(flash_attention), vocab_size=vocab_size,
        tokens=float(chinchilla if tokens is None else tokens),
        global_batch=int(global_batch or max(1, round(2**19 / t))), mfu=mfu, counts=counts, chinchilla=chinchilla,
    )


def _candidate_layouts(run, strategy):
    """The layouts `strategy` allows whose data-parallel devices each get a sequence, and a note
    on the ones left out for a too small global batch."""
    if strategy != "auto" and strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r}: expected auto or one of {', '.join(STRATEGIES)}")
    candidates = layouts(run.devices, run.hardware.per_host, run.config)
    if strategy != "auto":
        candidates = [lay for lay in candidates if lay.strategy == strategy]
        if not candidates:
            raise ConfigError(
                f"--strategy {strategy}: not possible with {run.devices} device(s) and {run.config.n_head} heads"
            )
    busy = [lay for lay in candidates if lay.data_parallel <= run.global_batch]
    idle = [lay for lay in candidates if lay.data_parallel > run.global_batch]
    if not busy:
        widest = min(lay.data_parallel for lay in idle)
        raise ConfigError(
            f"--devices: {run.devices} {run.hardware.name} devices with a global batch of {run.global_batch} "
            f"sequences (--batch / train.batch_size) leave {widest - run.global_batch} of the {widest} data-parallel "
            f"devices without a sequence; expected a batch of at least {widest}, or fewer devices"
        )
    skipped = [
        f"layout {lay.strategy} left out: its {lay.data_parallel} data-parallel devices need a global batch of "
        f"at least {lay.data_parallel} sequences, got {run.global_batch}" for lay in idle
    ]
    return busy, skipped


def _recommend(run, candidates, remat, micro_batch):
    """The first layout, in order of preference, whose largest micro-batch fits in memory."""
    for lay in candidates:
        per_device = math.ceil(run.global_batch / lay.data_parallel)
        micros = [micro_batch] if micro_batch else [m for m in range(per_device, 0, -1) if per_device % m == 0]
        for use_remat in ([False, True] if remat == "auto" else [bool(remat)]):
            fitting = [m for m in micros if run.memory(lay, m, use_remat).total <= run.usable]
            if fitting:
                m = fitting[0]
                return dict(
                    fits=True, strategy=lay.strategy, data_parallel=lay.data_parallel,
                    tensor_parallel=lay.tensor_parallel, fsdp=lay.fsdp, remat=use_remat, micro_batch=m,
                    grad_accumulation=math.ceil(per_device / m), memory=run.memory(lay, m, use_remat).to_dict(),
                    reason="",
                )
    return _does_not_fit(run, candidates[-1], remat, micro_batch)


def _does_not_fit(run, lay, remat, micro_batch):
    """The recommendation when nothing fits: the most sharded layout, and what is too big."""
    use_remat = remat if remat != "auto" else True
    best = run.memory(lay, micro_batch or 1, use_remat)
    name, usable = run.hardware.name, human_bytes(run.usable)
    if best.states + best.buffers > run.usable:
        reason = (f"weights, gradients and {run.optimizer} state alone need {human_bytes(best.states + best.buffers)} "
                  f"per device even with {lay.strategy} over {run.devices} device(s); {name} has "
                  f"{usable} usable: use more devices")
    else:
        reason = (f"activations of micro-batch {micro_batch or 1} x {run.seq_len} need {human_bytes(best.activations)} "
                  f"on top of {human_bytes(best.states)} of states with {lay.strategy}; {name} has "
                  f"{usable} usable: shorten the sequence or use more devices")
    return dict(fits=False, strategy=lay.strategy, data_parallel=lay.data_parallel,
                tensor_parallel=lay.tensor_parallel, fsdp=lay.fsdp, remat=use_remat,
                micro_batch=micro_batch or 1, grad_accumulation=1, memory=best.to_dict(), reason=reason)


def _training_time(run, train_total, remat, peak_flops):
    """Seconds to train: total FLOPs (x 4/3 with remat) over devices x peak x MFU."""
    peak = float(peak_flops) if peak_flops else run.hardware.peak(_PEAK_DTYPE[run.precision])
    seconds = train_total * (4 / 3 if remat else 1.0) / (run.devices * peak * run.mfu)
    steps = math.ceil(run.tokens / (run.global_batch * run.seq_len))
    return dict(seconds=seconds, days=seconds / 86400, mfu=run.mfu, peak_flops=peak, steps=steps,
                step_seconds=seconds / steps, tokens_per_second=run.tokens / seconds)


def _memory_rows(run, micro):
    """Memory per device of every layout, in float32 and the run's precision, with and without remat."""
    rows = []
    shown = [run.precision] if run.precision == "float32" else ["float32", run.precision]
    for lay in layouts(run.devices, run.hardware.per_host, run.config):
        for prec in shown:
            plain, rem = run.memory(lay, micro, False, prec), run.memory(lay, micro, True, prec)
            rows.append(dict(strategy=lay.strategy, mesh=[lay.data_parallel, lay.tensor_parallel],
                             precision=prec, states=plain.states, activations=plain.activations,
                             activations_remat=rem.activations, buffers=plain.buffers,
                             total=plain.total, total_remat=rem.total,
                             fits=plain.total <= run.usable, fits_remat=rem.total <= run.usable))
    return rows
