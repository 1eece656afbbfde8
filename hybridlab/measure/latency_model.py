"""A latency model per device: prefill time of a model (or of a pruning plan) predicted from its widths.

FLOPs mispredict which plan is faster: on a CPU a Mamba2 mixer costs several times an MLP of more
FLOPs (its chunked scan and elementwise work do not show in matmul FLOPs). So each layer kind gets
its own small linear model fitted to timings on this device (hybridlab.measure.latency_calibration):

    time(layer of kind k) = c_k + sum_f b_{k,f} * feature_f(widths, tokens)      (b >= 0, NNLS)

with features that follow how each mixer spends its time (`mixer_features`): matmul multiply-adds
(exact, from hybridlab.model.sizes; a mixture of experts' on its active path, plus a cost per routed expert),
and for Mamba2 the scan's state work (tokens x heads x head_dim
x state) and its per-head work (tokens x heads x (head_dim + state)); for attention the score work
over the average causal context; for an MLP its activation. What is outside the layers (embedding,
final norm, the lm head on the last position, the model's own overhead) is one more such model
("rest"). A model's predicted prefill is rest + the sum over its layers, so a plan's predicted
speedup is the teacher's prediction over the plan's (`predicted_speedup`).

A calibration is saved as JSON, one file per device name + dtype + threads
(<workspace>/latency/<key>.json), holding one fit per model family (the families run different
code), with what the fit saw: seq lens, the widths' range, and which Mamba forward ran (a faster
Mamba path changes its costs: re-calibrate).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hybridlab.core.atomic import write_json
from hybridlab.core.errors import UserError
from hybridlab.families import ATTENTION, MAMBA, MLP, MOE, MambaLayout, Widths, describe, mixers_of
from hybridlab.model.sizes import ACTIVE_MIXER_PARAMS, planned_widths

REST = "rest"  # what the model spends outside its layers
FORMAT_VERSION = 1


def mixer_features(kind: str, w: Widths, tokens: int, seq_len: int) -> dict[str, float]:
    """The work one mixer of `kind` does on `tokens` tokens (batch x seq_len), by feature."""
    feats = {f"{kind}.matmul": float(tokens * ACTIVE_MIXER_PARAMS[kind](w))} if kind in ACTIVE_MIXER_PARAMS else {}
    if kind == MOE:
        # Tokens only pass through the top-k experts they are routed to, but every expert that receives
        # tokens is one more small matmul call: the count of routed experts costs on its own.
        feats["moe.experts"] = float(w.num_moe_experts)
    elif kind == MAMBA:
        layout = MambaLayout.of(w)
        feats["mamba.state"] = float(tokens * layout.inner * w.mamba_state_size)
        feats["mamba.heads"] = float(tokens * w.mamba_num_heads * (w.mamba_head_dim + w.mamba_state_size))
    elif kind == ATTENTION:
        context = (seq_len + 1) / 2
        feats["attention.scores"] = float(tokens * w.num_attention_heads * w.attention_head_dim * context)
    elif kind == MLP:
        feats["mlp.activation"] = float(tokens * w.ffn_hidden_size)
    if not feats:
        raise UserError(
            f"the latency model knows no {kind!r} mixer; it times {MAMBA}, {MLP}, {ATTENTION} and {MOE} layers"
        )
    return feats


def layer_features(layer_kind: str, w: Widths, tokens: int, seq_len: int) -> dict[str, float]:
    """A layer's features: a constant (its call overhead) and its mixers' work."""
    feats = {"calls": 1.0, "hidden": float(tokens * w.hidden_size)}  # the pre-norms and residual adds
    for kind in mixers_of(layer_kind):
        feats.update(mixer_features(kind, w, tokens, seq_len))
    return feats


def rest_features(w: Widths, batch_size: int, seq_len: int) -> dict[str, float]:
    """Outside the layers: model overhead (fixed and per layer), embedding lookup and final norm, the lm head."""
    return {
        "calls": 1.0,
        "layers": float(w.num_layers),  # the layer loop, masks and cache entries per layer
        "hidden": float(batch_size * seq_len * w.hidden_size),
        "lm_head": float(batch_size * w.vocab_size * w.hidden_size),
    }


@dataclass
class LinearFit:
    """time_s = sum(coef[f] * features[f]); coefficients >= 0."""

    coef: dict[str, float]

    def predict(self, features: dict[str, float]) -> float:
        missing = set(features) - set(self.coef)
        if missing:
            raise UserError(f"this latency calibration has no coefficient for {sorted(missing)}; re-calibrate")
        return sum(self.coef[f] * value for f, value in features.items())


def fit_linear(rows: list[dict[str, float]], times_s: list[float]) -> LinearFit:
    """Non-negative least squares of times on features, columns scaled for conditioning.

    Plain (absolute) squares, not relative ones: minimising relative errors of noisy, right-skewed
    timings pulls the fit below the typical time, most for short, noisy layers (an MLP), which then
    looks cheaper next to a Mamba mixer than it is; absolute squares weight the long timings, which
    are also what a whole model's prefill is made of (measured on the demo: depth-only 50% candidate
    +16% error with relative weights, +9% with absolute ones, the others unchanged)."""
    from scipy.optimize import nnls

    names = sorted({f for row in rows for f in row})
    x = np.array([[row.get(f, 0.0) for f in names] for row in rows], dtype=np.float64)  # [points, features]
    y = np.asarray(times_s, dtype=np.float64)  # [points]
    if len(y) == 0 or len(y) != len(x):
        raise ValueError(f"need as many timings as feature rows, got {len(y)} and {len(x)}")
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    solution, _ = nnls(x / scale, y)
    return LinearFit({name: float(c / s) for name, c, s in zip(names, solution, scale)})


@dataclass
class LatencyModel:
    """The fitted prefill-time model of one family on one device, dtype and thread count."""

    family: str
    device: str  # "cpu" or "cuda"
    device_name: str  # "cpu" or the GPU's name
    dtype: str
    threads: int
    layers: dict[str, LinearFit]  # per layer kind string ("mamba", "mamba+mlp", ...)
    rest: LinearFit
    seq_lens: list[int] = field(default_factory=list)
    mamba_forward: str | None = None  # the Mamba mixer's forward that ran (a fast path shows here)
    fast_mamba: bool = False
    calibrated_at: float = field(default_factory=time.time)
    seconds: float = 0.0  # how long the calibration took
    rounds: int = 0  # timed rounds over every shape
    points: list[dict] = field(default_factory=list)  # the timings the fit came from (kind, features, seconds)

    @property
    def key(self) -> str:
        return calibration_key(self.device_name, self.dtype, self.threads)

    @property
    def label(self) -> str:
        """Where the prediction comes from, for a caption."""
        mamba = ", fast Mamba path" if self.fast_mamba else ""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.calibrated_at))
        return f"calibrated on {self.device_name} ({self.dtype}, {self.threads} threads{mamba}) at {when}"

    def predict_ms(self, widths: Widths, seq_len: int, batch_size: int = 1) -> dict:
        """Predicted prefill of a model with `widths`: {"total_ms", "by_kind": {layer kind: ms}, "rest_ms"}."""
        tokens = batch_size * seq_len
        by_kind: dict[str, float] = {}
        for kind in widths.layer_kinds:
            if kind not in self.layers:
                raise UserError(
                    f"this latency calibration ({self.family}) has no {kind!r} layers; "
                    "run `hybridlab latency-calibrate` with this model"
                )
            by_kind[kind] = by_kind.get(kind, 0.0) + 1000.0 * self.layers[kind].predict(
                layer_features(kind, widths, tokens, seq_len)
            )
        rest = 1000.0 * self.rest.predict(rest_features(widths, batch_size, seq_len))
        return {"total_ms": rest + sum(by_kind.values()), "by_kind": by_kind, "rest_ms": rest}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layers"] = {k: fit.coef for k, fit in self.layers.items()}
        out["rest"] = self.rest.coef
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "LatencyModel":
        values = dict(values)
        values["layers"] = {k: LinearFit(dict(c)) for k, c in values["layers"].items()}
        values["rest"] = LinearFit(dict(values["rest"]))
        return cls(**values)


def predicted_speedup(
    latency: LatencyModel, config, spec=None, seq_len: int = 256, batch_size: int = 1, drop_layers=None
) -> dict:
    """The plan's predicted prefill against its parent's: {"speedup", "parent_ms", "plan_ms", "source"}.
    `config` may be a ModelDescription; `spec` a PruneSpec (None: the parent itself)."""
    description = describe(config)
    if description.family.name != latency.family:
        raise UserError(
            f"this latency calibration is for {latency.family} models, not {description.family.name}; "
            "run `hybridlab latency-calibrate` with this model"
        )
    parent = latency.predict_ms(description.widths, seq_len, batch_size)["total_ms"]
    plan = latency.predict_ms(planned_widths(description, spec, drop_layers=drop_layers), seq_len, batch_size)
    return {
        "speedup": parent / plan["total_ms"],
        "latency_ratio": plan["total_ms"] / parent,
        "parent_ms": parent,
        "plan_ms": plan["total_ms"],
        "by_kind_ms": plan["by_kind"],
        "source": latency.label,
    }


# ---- storage: one JSON file per device name + dtype + threads ---------------------------------


def calibration_key(device_name: str, dtype: str, threads: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "device"
    return f"{slug}-{dtype}-t{int(threads)}"


def calibration_dir(workspace=None) -> Path:
    from hybridlab.core.paths import workspace_dir

    return workspace_dir(workspace) / "latency"


def save_latency_model(latency: LatencyModel, folder: str | Path | None = None) -> Path:
    """Write (or replace) this family's fit in its device file, atomically; returns the file."""
    folder = Path(folder) if folder is not None else calibration_dir()
    path = folder / f"{latency.key}.json"
    stored = _read(path) if path.exists() else {"version": FORMAT_VERSION, "families": {}}
    stored["families"][latency.family] = latency.to_dict()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, stored, indent=1)
    return path


def _read(path: Path) -> dict:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"latency calibration {path} cannot be read ({err}); delete it and re-calibrate") from None
    if not isinstance(stored, dict) or stored.get("version") != FORMAT_VERSION or "families" not in stored:
        raise UserError(
            f"latency calibration {path} is not a version-{FORMAT_VERSION} file; delete it and re-calibrate"
        )
    return stored


def load_latency_model(path: str | Path, family: str) -> LatencyModel:
    stored = _read(Path(path))
    if family not in stored["families"]:
        raise UserError(f"latency calibration {path} has no {family} fit (has {sorted(stored['families'])})")
    return LatencyModel.from_dict(stored["families"][family])


def find_latency_model(
    config,
    device_name: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    folder: str | Path | None = None,
) -> LatencyModel | None:
    """The calibration for this model's family that matches the given device name, dtype and threads
    (None: any), preferring this process's thread count, then the newest; None when there is none."""
    import torch

    family = describe(config).family.name
    folder = Path(folder) if folder is not None else calibration_dir()
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            fit = _read(path)["families"].get(family)
        except UserError:
            continue  # an unreadable file is not this lookup's business; loading it by path says why
        if fit is None:
            continue
        if (device_name, dtype, threads) != (None, None, None) and any(
            want is not None and fit[key] != want
            for key, want in (("device_name", device_name), ("dtype", dtype), ("threads", threads))
        ):
            continue
        found.append(LatencyModel.from_dict(fit))
    if not found:
        return None
    return max(found, key=lambda m: (m.threads == torch.get_num_threads(), m.calibrated_at))


def missing_calibration(config, device_name: str | None, dtype: str | None, threads: int | None) -> UserError:
    """The one line a command prints when it needs a calibration that does not exist."""
    wanted = ", ".join(f"{k} {v}" for k, v in (("device", device_name), ("dtype", dtype), ("threads", threads)) if v)
    return UserError(
        f"no latency calibration for {describe(config).family.name} models"
        f"{f' ({wanted})' if wanted else ''}; run `hybridlab latency-calibrate --model <this model>` first"
    )


def speedup_estimate(
    config, spec=None, seq_len: int = 256, batch_size: int = 1, drop_layers=None, latency=None, folder=None
) -> dict:
    """A plan's speedup as the planner shows it: predicted by this device's latency model when one is
    calibrated for the family (`latency`, else the newest found in `folder`), else the FLOP ratio, with
    a label saying which. {"speedup", "basis": "latency model" | "FLOPs", "label"}."""
    from hybridlab.model.sizes import sizes_of

    description = describe(config)
    latency = latency if latency is not None else find_latency_model(description, folder=folder)
    if latency is not None:
        predicted = predicted_speedup(latency, description, spec, seq_len, batch_size, drop_layers)
        return {"speedup": predicted["speedup"], "basis": "latency model", "label": f"latency model {latency.label}"}
    parent = sizes_of(description.widths, seq_len, batch_size).flops_per_token
    plan = sizes_of(planned_widths(description, spec, drop_layers=drop_layers), seq_len, batch_size).flops_per_token
    return {
        "speedup": parent / plan,
        "basis": "FLOPs",
        "label": f"FLOP ratio: no latency calibration for {description.family.name} models here "
        "(run `hybridlab latency-calibrate --model ...` for a predicted speedup)",
    }
