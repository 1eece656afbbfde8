"""Calibrating the latency model (hybridlab.measure.latency_model) on this device.

Small random-weight models of the given model's family are built at a few widths (the model's own,
all at 3/4 and 1/2, and each prunable axis alone at 1/2) with a short layer pattern (two layers of
each kind the model has), and one at the model's own widths and depth, in the model's class, dtype, device and Mamba path. Each is run as bench's
prefill at a few sequence lengths, every shape once per round, round after round (so the machine's
changing load falls on all shapes alike); forward hooks on every decoder layer (the family adapter's
`Layer.block`) time the layers one by one, and what the forward spends outside them is the "rest". One linear fit
per layer kind and one for the rest make the LatencyModel. Only widths and layer kinds come from
the family description; no tensor name is used here.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from hybridlab.core.progress import ProgressFn
from hybridlab.core.settings import (
    MAX_SEQ_LEN,
    at_most,
    comma_list,
    positive,
    setting,
    step_count,
    step_count_or_zero,
)
from hybridlab.families import MAMBA, describe
from hybridlab.measure.bench import _calls, describe_run, mamba_kernels
from hybridlab.measure.latency_model import (
    REST,
    LatencyModel,
    fit_linear,
    layer_features,
    rest_features,
)
from hybridlab.model.sizes import planned_widths
from hybridlab.model.spec import PruneSpec

MIN_ROUNDS = 3  # timed rounds a calibration always makes, whatever its time budget
WIDTH_AXES = (
    "hidden_size",
    "ffn_hidden_size",
    "mamba_num_heads",
    "mamba_head_dim",
    "num_attention_heads",
    "num_moe_experts",
    "moe_ffn_hidden_size",
    "moe_shared_expert_intermediate_size",
)


def seq_len_list(text) -> list[int]:
    """'64,256' -> [64, 256]."""
    values = text if isinstance(text, list) else comma_list(text)
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"cannot read sequence lengths from {text!r}; write e.g. 64,256") from None


def sequence_lengths(values) -> list[int]:
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(f"must be a non-empty list of whole numbers, e.g. [64, 256], got {values!r}")
    for value in values:
        at_most(MAX_SEQ_LEN)(positive(value))
    return sorted(set(values))


@dataclass
class CalibrationSettings:
    seq_lens: list[int] = setting(
        default_factory=lambda: [64, 256],
        parse=seq_len_list,
        check=sequence_lengths,
        cli_default="64,256",
        help="prompt lengths timed, comma-separated (cover the lengths you will predict for)",
    )
    repeats: int = setting(7, check=step_count, help="timed rounds over every shape; the median counts")
    warmup: int = setting(1, check=step_count_or_zero, help="untimed forwards per shape first")
    max_seconds: float = setting(
        90.0,
        check=(positive, at_most(86_400)),
        help=f"no new timed round starts after this many seconds, once {MIN_ROUNDS} have run: "
        "a slow dtype or a busy machine gets fewer rounds, not a longer wait",
    )


def width_points(description) -> list[PruneSpec]:
    """The widths timed: the model's, all axes at 3/4 and 1/2, each axis alone at 1/2 (so the fit can
    tell the axes apart); each with two layers of every kind; then the model's own widths and layers
    (so the rest can tell a per-layer cost from a fixed one). Points the family refuses are left out."""
    widths = description.widths
    axes = {a: getattr(widths, a) for a in WIDTH_AXES if getattr(widths, a) and a not in widths.derived_axes}
    steps = {
        "mamba_num_heads": widths.mamba_n_groups,
        "num_attention_heads": max(widths.num_key_value_heads, 1),
        "num_moe_experts": widths.moe_n_group,  # whole routing groups
        "moe_ffn_hidden_size": 8,  # transformers' grouped_mm experts need rows of 16 bytes
    }
    scalings = [{}, {a: 0.75 for a in axes}, {a: 0.5 for a in axes}, *({a: 0.5} for a in axes)]
    drop = _short_pattern(widths.layer_kinds)
    points = []
    for scaling in scalings:
        values = {a: _snap(axes[a] * s, steps.get(a, 8 if axes[a] >= 64 else 1)) for a, s in scaling.items()}
        for layers in (drop, None):  # the short pattern, else the model's own if the family refuses it
            spec = PruneSpec(**{a: v for a, v in values.items() if v != axes[a]}, drop_layers=layers)
            try:
                planned_widths(description, spec)
            except ValueError:
                continue
            points.append(spec)
            break
    if drop is not None:  # and the model's own depth once: what the forward spends per layer outside them
        points.append(PruneSpec())
    return points


def _snap(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


def _short_pattern(kinds: tuple[str, ...]) -> tuple[int, ...] | None:
    """Layers to drop so that two layers of each kind remain (None: nothing to drop)."""
    kept, seen = set(), {}
    for i, kind in enumerate(kinds):
        if seen.get(kind, 0) < 2:
            kept.add(i)
            seen[kind] = seen.get(kind, 0) + 1
    drop = tuple(i for i in range(len(kinds)) if i not in kept)
    return drop or None


def build_like(model, description, spec: PruneSpec):
    """A random-weight model of `model`'s class with the widths `spec` plans, on its device and dtype,
    running the same Mamba path as `model`."""
    config = description.config_with(planned_widths(description, spec))
    parameter = next(model.parameters())
    with torch.device(parameter.device):
        built = type(model)(config)
    return match_mamba_path(model, built.to(parameter.dtype).eval())


def _fast_mamba_module():
    try:
        from hybridlab.model import fast_mamba
    except ImportError:  # a checkout without the fast CPU Mamba path
        return None
    needed = ("fast_mixers", "is_fast", "use_fast_mamba")
    return fast_mamba if all(hasattr(fast_mamba, name) for name in needed) else None


def fast_mamba_on(model) -> bool:
    """Whether `model`'s Mamba mixers run hybridlab's fast CPU path (hybridlab.model.fast_mamba)."""
    fast = _fast_mamba_module()
    return fast is not None and any(fast.is_fast(m) for m in fast.fast_mixers(model))


def match_mamba_path(source, target):
    """`target` with the fast Mamba path switched on when `source` has it (models built or pruned in
    memory do not get what the loaders switch on): timings compare like with like. Returns `target`."""
    if fast_mamba_on(source):
        _fast_mamba_module().use_fast_mamba(target)
    return target


class LayerTimer:
    """One prefill of [1, seq_len] random tokens through `model`, each decoder layer timed by hooks on the
    family's layer blocks (with a CUDA synchronize around each on a GPU); `run()` returns
    (seconds per layer, seconds of the whole prefill). `close()` removes the hooks."""

    def __init__(self, model, seq_len: int, seed: int = 0):
        self.model = model
        device = next(model.parameters()).device
        self.layers = describe(model).parts(model).layers
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.starts: dict[int, float] = {}
        self.spent: dict[int, float] = {}
        self.handles = []
        for layer in self.layers:
            self.handles.append(layer.block.register_forward_pre_hook(self._before(layer.index)))
            self.handles.append(layer.block.register_forward_hook(self._after(layer.index)))
        generator = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=generator).to(device)  # [1, T]
        self.prefill = _calls(model, input_ids)[0]

    def _before(self, index: int):
        def hook(module, args):
            self.sync()
            self.starts[index] = time.perf_counter()

        return hook

    def _after(self, index: int):
        def hook(module, args, output):
            self.sync()
            self.spent[index] = self.spent.get(index, 0.0) + time.perf_counter() - self.starts[index]

        return hook

    def run(self) -> tuple[list[float], float]:
        self.spent.clear()
        with torch.inference_mode():
            self.sync()
            begin = time.perf_counter()
            self.prefill()
            self.sync()
            total = time.perf_counter() - begin
        return [self.spent.get(layer.index, 0.0) for layer in self.layers], total

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def time_layers(model, seq_len: int, repeats: int, warmup: int) -> tuple[list[float], float]:
    """(median seconds of each decoder layer, median seconds of the prefill) over `repeats` LayerTimer runs."""
    timer = LayerTimer(model, seq_len)
    try:
        runs = [timer.run() for _ in range(warmup + repeats)][warmup:]
    finally:
        timer.close()
    return [statistics.median(r[0][i] for r in runs) for i in range(len(timer.layers))], statistics.median(
        r[1] for r in runs
    )


def mamba_forward(model) -> str | None:
    """Which function runs the model's Mamba mixers ("module.qualname"), found through the family's
    parts (the module whose child is the mixer's in_proj); None without Mamba layers."""
    parts = describe(model).parts(model)
    for layer in parts.layers:
        sub = layer.sublayer(MAMBA)
        if sub is None:
            continue
        for module in layer.block.modules():
            if any(child is sub.parts.in_proj for child in module.children()):
                forward = module.forward
                inner = getattr(module, "torch_forward", None)
                names = [
                    f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', '?')}" for f in (forward, inner) if f
                ]
                return " -> ".join(names)
    return None


def calibrate(model, settings: CalibrationSettings | None = None, progress: ProgressFn | None = None) -> LatencyModel:
    """Time small models of `model`'s family on its device and dtype and fit the latency model."""
    settings = settings or CalibrationSettings()
    settings.seq_lens = sequence_lengths(settings.seq_lens)
    description = describe(model)
    begin = time.perf_counter()
    rows: dict[str, list] = {}
    points = []
    built = [build_like(model, description, spec) for spec in width_points(description)]
    shapes = [(b, describe(b).widths, seq_len) for b in built for seq_len in settings.seq_lens]
    timers = [LayerTimer(b, seq_len) for b, _, seq_len in shapes]
    runs: list[list] = [[] for _ in shapes]
    planned = settings.warmup + settings.repeats
    try:
        # Round-robin over the shapes, like paired timing: a change in the machine's load falls on
        # every shape's rounds alike instead of on whichever shape was being timed then.
        for round_ in range(planned):
            elapsed = time.perf_counter() - begin
            if round_ >= settings.warmup + MIN_ROUNDS and elapsed > settings.max_seconds:
                break
            if progress is not None:
                progress(max(round_ / planned, min(elapsed / settings.max_seconds, 0.99)), "latency calibration", None)
            for timer, kept in zip(timers, runs):
                measured = timer.run()
                if round_ >= settings.warmup:
                    kept.append(measured)
    finally:
        for timer in timers:
            timer.close()
    # A round that ran while the machine was busier is slower for every shape: scale each round by how
    # its shapes compared with their own medians (the median of those ratios, so one spike does not count).
    typical = [statistics.median(r[1] for r in measured) for measured in runs]  # [shapes]
    load = [
        statistics.median(measured[i][1] / typical[s] for s, measured in enumerate(runs)) for i in range(len(runs[0]))
    ]  # [rounds]
    for (_, widths, seq_len), measured in zip(shapes, runs):
        layer_s = [statistics.median(r[0][i] / f for r, f in zip(measured, load)) for i in range(widths.num_layers)]
        # the rest round by round: a difference of medians can go negative when a layer was slow in one round
        rest_s = max(statistics.median((r[1] - sum(r[0])) / f for r, f in zip(measured, load)), 0.0)
        for kind, seconds in zip(widths.layer_kinds, layer_s):
            feats = layer_features(kind, widths, seq_len, seq_len)
            rows.setdefault(kind, []).append((feats, seconds))
            points.append({"kind": kind, "seq_len": seq_len, "features": feats, "seconds": seconds})
        feats = rest_features(widths, 1, seq_len)
        rows.setdefault(REST, []).append((feats, rest_s))
        points.append({"kind": REST, "seq_len": seq_len, "features": feats, "seconds": rest_s})
    del built, shapes, timers
    if progress is not None:
        progress(1.0, "latency calibration", None)
    fits = {kind: fit_linear([f for f, _ in pairs], [s for _, s in pairs]) for kind, pairs in rows.items()}
    where = describe_run(model)
    forward = mamba_forward(model)
    if forward and fast_mamba_on(model):
        forward += " with hybridlab.model.fast_mamba's scan"
    if forward and mamba_kernels(next(model.parameters()).device)["in_use"]:
        forward += " with the mamba_ssm CUDA kernels"
    return LatencyModel(
        family=description.family.name,
        device=torch.device(where["device"]).type,
        device_name=where["device_name"],
        dtype=where["dtype"],
        threads=where["torch_threads"],
        layers={k: v for k, v in fits.items() if k != REST},
        rest=fits[REST],
        seq_lens=list(settings.seq_lens),
        mamba_forward=forward,
        fast_mamba=fast_mamba_on(model),
        seconds=time.perf_counter() - begin,
        rounds=len(runs[0]),
        points=points,
    )
