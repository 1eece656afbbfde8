"""Latency and memory of a model: prefill latency, decode throughput with the cache, peak memory.

Timing: warm-up runs first, then the median of `repeats` runs. On CUDA with CUDA events and
a synchronize; on the CPU with time.perf_counter. `measure_paired` times a model interleaved
with its reference (the teacher it came from) and reports the speedup with a confidence
interval (hybridlab.measure.paired says why and how); `measure_latency` times one model alone.

- prefill: one forward over [batch_size, seq_len] random tokens that builds the cache
  (use_cache=True) and keeps only the last position's logits, as generation does.
- decode: `model.generate` greedy with min_new_tokens = max_new_tokens = new_tokens, minus the
  same call with one new token (which is the prefill plus generate's fixed overhead); the
  difference is new_tokens - 1 cached single-token steps.
- state: bytes of the cache tensors after prefill (KV cache, Mamba conv and SSM states).
- peak memory, measured over one generate call made before any timed run:
  CUDA: torch.cuda.max_memory_allocated (tensors only, weights included).
  CPU (Linux): the process's resident-set high-water mark (VmHWM, reset through
  /proc/self/clear_refs). It counts the whole process (Python, libraries, weights); the
  `peak_memory_delta_bytes` field is the rise above the resident set before the call:
  activations, cache and allocator growth. Memory the allocator kept from earlier work in
  the process is reused without raising the mark, so the delta is a lower bound. None where
  unavailable.
"""

from __future__ import annotations

import importlib.util
import inspect
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from hybridlab.core.progress import ProgressFn
from hybridlab.measure.paired import LEVEL, METHOD, PairedTimes, Timer, interleave


def _device(model) -> torch.device:
    return next(model.parameters()).device


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of fn takes; on CUDA measured with events around a synchronize."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def median_time(fn, device, repeats: int, warmup: int, tick: Callable[[], None] = lambda: None) -> list[float]:
    """Per-repeat seconds (after `warmup` untimed calls); take statistics.median of it."""
    for _ in range(warmup):
        fn()
        tick()
    times = []
    for _ in range(repeats):
        times.append(time_call(fn, device))
        tick()
    return times


def mamba_kernels(device: torch.device) -> dict:
    """Whether transformers will pick the mamba-ssm / causal-conv1d CUDA kernels (it uses them when importable)."""
    mamba = importlib.util.find_spec("mamba_ssm") is not None
    conv = importlib.util.find_spec("causal_conv1d") is not None
    return {"mamba_ssm": mamba, "causal_conv1d": conv, "in_use": bool(mamba and conv and device.type == "cuda")}


def _rss_bytes(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets the peak RSS (VmHWM), Linux >= 4.0
        return True
    except OSError:
        return False


def peak_memory(fn, device: torch.device) -> dict:
    """Peak memory while fn runs (see the module docstring for what is measured where)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "peak_memory_bytes": peak,
            "peak_memory_delta_bytes": peak - before,
            "memory_measure": "cuda max_memory_allocated",
        }
    before = _rss_bytes("VmRSS")
    if before is None or not _reset_rss_peak():
        fn()
        return {"peak_memory_bytes": None, "peak_memory_delta_bytes": None, "memory_measure": "unavailable"}
    fn()
    peak = _rss_bytes("VmHWM")
    return {
        "peak_memory_bytes": peak,
        "peak_memory_delta_bytes": max(peak - before, 0),
        "memory_measure": "process resident-set high-water mark (VmHWM)",
    }


def cache_bytes(cache) -> int | None:
    """Bytes held by the tensors of a transformers cache (KV tensors, Mamba conv and SSM
    states), found by walking its layers' attributes; None when there is no cache."""
    if cache is None:
        return None
    seen: dict[int, int] = {}

    def walk(obj, depth: int) -> None:
        if isinstance(obj, torch.Tensor):
            seen[id(obj)] = obj.numel() * obj.element_size()
        elif depth > 0 and isinstance(obj, dict):
            for value in obj.values():
                walk(value, depth - 1)
        elif depth > 0 and isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value, depth - 1)
        elif depth > 0 and hasattr(obj, "__dict__"):
            for value in vars(obj).values():
                walk(value, depth - 1)

    walk(getattr(cache, "layers", cache), depth=4)
    return sum(seen.values())


def analytic_sizes(config, seq_len: int, batch_size: int, dtype_bytes: int) -> dict | None:
    """The engine core's analytic params / FLOPs per token / state bytes, or None if unavailable."""
    try:
        from hybridlab.model.sizes import estimate_sizes
    except ImportError:
        return None
    try:
        sizes = estimate_sizes(config, seq_len=seq_len, batch_size=batch_size, dtype_bytes=dtype_bytes)
    except (ValueError, KeyError, AttributeError) as err:  # a family sizes.py does not know
        return {"error": str(err)}
    return sizes.to_dict() if hasattr(sizes, "to_dict") else dict(vars(sizes))


def _check(batch_size: int, seq_len: int, new_tokens: int, repeats: int, warmup: int) -> None:
    for name, value, least in (
        ("batch_size", batch_size, 1),
        ("seq_len", seq_len, 1),
        ("new_tokens", new_tokens, 2),
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
    ):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")


def _inputs(config, batch_size: int, seq_len: int, seed: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator).to(device)  # [B, T]


def _calls(model, input_ids: torch.Tensor) -> tuple[Callable[[], object], Callable[[int], Callable[[], object]]]:
    """(prefill, generate(n)) of `model` on `input_ids` [B, T]: the calls every timing here makes."""
    batch_size, seq_len = input_ids.shape
    config = model.config
    attention_mask = torch.ones_like(input_ids)
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def prefill():
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **keep_last)

    def generate(n: int):
        def run():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=False,
                min_new_tokens=n,
                max_new_tokens=n,
                pad_token_id=pad_id,
            )
            if out.shape != (batch_size, seq_len + n):  # [B, T + n]
                raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(batch_size, seq_len + n)}")
            return out

        return run

    return prefill, generate


def _ticker(progress: ProgressFn | None, steps: int) -> Callable[[], None]:
    done = [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(min(done[0] / steps, 1.0), "benchmark", None)

    return tick


def describe_run(model) -> dict:
    """Where and how a model runs: device, dtype, threads, Mamba kernels."""
    device = _device(model)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "mamba_kernels": mamba_kernels(device),
    }


def _model_fields(model, config, seq_len: int, batch_size: int) -> dict:
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        # state_bytes at the model's own element size, for seq_len tokens of context
        "analytic": analytic_sizes(config, seq_len, batch_size, next(model.parameters()).element_size()),
    }


def measure_latency(
    model,
    batch_size: int = 1,
    seq_len: int = 256,
    new_tokens: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict:
    """Prefill latency, decode throughput and peak memory of `model` on its current device and dtype,
    timed alone (measure_paired times it against a reference)."""
    _check(batch_size, seq_len, new_tokens, repeats, warmup)
    device = _device(model)
    input_ids = _inputs(model.config, batch_size, seq_len, seed, device)
    prefill, generate = _calls(model, input_ids)
    tick = _ticker(progress, 3 * (warmup + repeats) + 1)
    with _eval_mode(model), torch.inference_mode():
        # Memory first: later runs reuse what the allocator kept, which would hide the rise.
        memory = peak_memory(generate(new_tokens), device)
        state_bytes = cache_bytes(getattr(prefill(), "past_key_values", None))
        tick()
        prefill_s = median_time(prefill, device, repeats, warmup, tick)
        first_s = median_time(generate(1), device, repeats, warmup, tick)
        full_s = median_time(generate(new_tokens), device, repeats, warmup, tick)
    return {
        **describe_run(model),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "warmup": warmup,
        **_timing_fields(prefill_s, first_s, full_s, batch_size, seq_len, new_tokens),
        **memory,
        "measured_state_bytes": state_bytes,  # the cache after prefill: compare with analytic state_bytes
        **_model_fields(model, model.config, seq_len, batch_size),
    }


def _timing_fields(prefill_s, first_s, full_s, batch_size: int, seq_len: int, new_tokens: int) -> dict:
    prefill_median = statistics.median(prefill_s)
    decode_s = statistics.median(full_s) - statistics.median(first_s)  # new_tokens - 1 cached steps
    return {
        "prefill_ms": 1000.0 * prefill_median,
        "prefill_ms_runs": [1000.0 * t for t in prefill_s],
        "prefill_tokens_per_s": batch_size * seq_len / prefill_median,
        "generate_ms": 1000.0 * statistics.median(full_s),
        # None when timer noise exceeds the decode time (a tiny model, few new tokens).
        "decode_ms_per_step": 1000.0 * decode_s / (new_tokens - 1) if decode_s > 0 else None,
        "decode_tokens_per_s": batch_size * (new_tokens - 1) / decode_s if decode_s > 0 else None,
    }


class _eval_mode:
    """Models in eval mode for the block, each put back in the mode it was in."""

    def __init__(self, *models):
        self.models = models

    def __enter__(self):
        self.was = [m.training for m in self.models]
        for m in self.models:
            m.eval()

    def __exit__(self, *exc):
        for m, was in zip(self.models, self.was):
            m.train(was)


def measure_paired(
    model,
    reference,
    batch_size: int = 1,
    seq_len: int = 256,
    new_tokens: int = 32,
    rounds: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: ProgressFn | None = None,
    timer: Timer | None = None,
    decode: bool = True,
) -> dict:
    """`model` timed interleaved with `reference` (hybridlab.measure.paired): every round times the
    model then the reference on the same inputs, for prefill, generate(new_tokens) and generate(1).
    The report holds measure_latency's fields for `model` (its medians over the paired rounds) plus
    `paired`: per workload the speedup reference/model with its interval and both medians with
    theirs, and `reference`: the reference's own fields. `timer` replaces the clock (tests);
    decode=False times prefill only (the generate and decode fields are then None)."""
    _check(batch_size, seq_len, new_tokens, rounds, warmup)
    device = _device(model)
    where, there = describe_run(model), describe_run(reference)
    if (where["device"], where["dtype"]) != (there["device"], there["dtype"]):
        raise ValueError(
            f"the model runs on {where['device']} in {where['dtype']} but its reference on {there['device']} in "
            f"{there['dtype']}; load both on one device in one dtype to time them in pairs"
        )
    vocab = min(int(model.config.vocab_size), int(reference.config.vocab_size))
    input_ids = _inputs(model.config, batch_size, seq_len, seed, device).remainder(vocab)  # [B, T], valid for both
    (prefill, generate), (ref_prefill, ref_generate) = _calls(model, input_ids), _calls(reference, input_ids)
    workloads = {"prefill": (prefill, ref_prefill)}
    if decode:
        workloads["generate"] = (generate(new_tokens), ref_generate(new_tokens))
        workloads["generate_1"] = (generate(1), ref_generate(1))
    tick = _ticker(progress, warmup + rounds + 1)
    with _eval_mode(model, reference), torch.inference_mode():
        memory = peak_memory(generate(new_tokens) if decode else prefill, device)
        state_bytes = cache_bytes(getattr(prefill(), "past_key_values", None))
        tick()
        timed = interleave(workloads, rounds, warmup, timer or (lambda fn: time_call(fn, device)), tick)
    steps = {"batch_size": batch_size, "seq_len": seq_len, "new_tokens": new_tokens}
    return {
        **where,
        **steps,
        "repeats": rounds,
        "warmup": warmup,
        **_side_fields(timed, "model_s", steps),
        **memory,
        "measured_state_bytes": state_bytes,
        **_model_fields(model, model.config, seq_len, batch_size),
        "reference": {
            **_side_fields(timed, "reference_s", steps),
            **_model_fields(reference, reference.config, seq_len, batch_size),
        },
        "paired": {
            "rounds": rounds,
            "warmup": warmup,
            "order": "model, reference in every round (ABAB...), warm-up rounds first",
            "level": LEVEL,
            "method": METHOD,
            "prefill": timed["prefill"].summary(),
            "generate": timed["generate"].summary() if decode else None,
            "decode": _paired_decode(timed["generate"], timed["generate_1"]) if decode else None,
        },
    }


def _side_fields(timed: dict[str, PairedTimes], side: str, steps: dict) -> dict:
    """measure_latency's timing fields for one side ("model_s" or "reference_s") of the paired rounds."""
    if "generate" not in timed:  # prefill only
        prefill_s = getattr(timed["prefill"], side)
        fields = _timing_fields(prefill_s, prefill_s, prefill_s, **steps)
        return {**fields, "generate_ms": None, "decode_ms_per_step": None, "decode_tokens_per_s": None}
    return _timing_fields(
        getattr(timed["prefill"], side), getattr(timed["generate_1"], side), getattr(timed["generate"], side), **steps
    )


def _paired_decode(full: PairedTimes, first: PairedTimes) -> dict | None:
    """Decode steps per round (generate(n) - generate(1)) as paired times; None when timer noise
    exceeds the decode time in some round (a tiny model, few new tokens)."""
    model_s = [f - o for f, o in zip(full.model_s, first.model_s)]
    reference_s = [f - o for f, o in zip(full.reference_s, first.reference_s)]
    if min(model_s + reference_s) <= 0:
        return None
    return PairedTimes(model_s, reference_s).summary()
