"""Settings declared once (hybridlab.core.settings): the CLI options and the job spec fields
are generated from the same dataclass fields, so they agree on names, defaults and checks."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from hybridlab.cli import build_parser, main
from hybridlab.cli.options import job_spec_from_args, settings_from_args
from hybridlab.compression.layer_importance import LAYER_METRICS
from hybridlab.core.settings import (
    build,
    check_settings,
    declared,
    parse_token_count,
    positive,
    setting,
)
from hybridlab.jobs import get_kind, validate_spec
from hybridlab.jobs.kinds.bench import BenchSettings
from hybridlab.jobs.kinds.common import LAYER_METRIC_OPTIONS, Calibration, JobOptions, ModelInput
from hybridlab.jobs.kinds.distill import DistillInputs
from hybridlab.jobs.kinds.evaluate import EvalSettings
from hybridlab.jobs.kinds.prune import PruneOptions
from hybridlab.jobs.kinds.search import SearchInputs
from hybridlab.jobs.registry import REQUIRED, settings_from_spec
from hybridlab.search.run import SearchSettings
from hybridlab.search.space import SearchSpace
from hybridlab.study.run import StudySettings
from hybridlab.training.distill import DistillSettings

# (settings dataclass, CLI command or None, job kind or None, fields the CLI leaves out on purpose)
OPERATIONS = [
    (DistillSettings, "distill", "distill", ()),
    (DistillInputs, "distill", "distill", ()),
    (SearchSettings, "search", "search", ()),
    (SearchInputs, "search", "search", ()),
    (StudySettings, "study", None, ()),
    (Calibration, "importance", "importance", ()),
    (Calibration, "prune", "prune", ()),
    (PruneOptions, "prune", "prune", ()),
    (EvalSettings, "eval", "eval", ()),
    (BenchSettings, "bench", "bench", ()),
    (ModelInput, "bench", "bench", ()),
    (JobOptions, "importance", "importance", ()),
    (JobOptions, "distill", "distill", ("device",)),  # no --device on distill and search: the job key stays
    (JobOptions, "search", "search", ("device",)),
]


def _command_actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("cls, command, kind, cli_skips", OPERATIONS)
def test_every_setting_is_a_cli_option_and_a_job_field_with_the_same_default(cls, command, kind, cli_skips):
    actions = _command_actions(command)
    fields = get_kind(kind).fields if kind else {}
    items = declared(cls)
    assert items, f"{cls.__name__} declares no settings"
    for item in items:
        if item.setting.cli and item.name not in cli_skips:
            action = actions[item.name]
            assert item.flag in action.option_strings
            if item.types == (bool,) and item.default is None:  # --x / --no-x, unset decides automatically
                assert action.default is None and f"--no-{item.flag[2:]}" in action.option_strings
            elif item.types == (bool,):  # a switch: given, it flips the default
                assert action.default is item.default and action.const is (not item.default)
            else:
                assert action.required == (item.required or item.setting.cli_required)
                if not action.required:
                    assert action.default == item.cli_default
                    assert item.setting.parse is not None or action.default == item.default
            assert action.choices == item.setting.choices
        else:
            assert item.name not in actions or item.name in cli_skips
        if kind and item.setting.job:
            spec_field = fields[item.key]
            assert spec_field.default == (REQUIRED if item.required else item.default)
            assert spec_field.nullable == item.nullable


def test_cli_defaults_mean_the_library_defaults():
    """Where the CLI writes a default as text (--tokens 200k), it parses to the library's value."""
    for cls in (DistillSettings, SearchSettings, StudySettings, EvalSettings):
        for item in declared(cls):
            text = item.cli_default
            if isinstance(text, str) and item.setting.parse is not None and item.name != "tasks":
                assert item.setting.parse(text) == item.default, item.name
    assert get_kind("eval").fields["tasks"].default == ["val_loss"]  # the one that differs on purpose


def test_library_only_knobs_are_neither_options_nor_spec_keys():
    names = {item.name for item in declared(DistillSettings)}
    assert {"min_lr_ratio", "warmup_fraction", "weight_decay", "grad_clip"}.isdisjoint(names)
    fields = get_kind("distill").fields
    assert "min_lr_ratio" not in fields and "bf16" in fields and "bf16_autocast" not in fields


def test_cli_and_job_build_the_same_distill_settings(tmp_path):
    argv = [
        "distill",
        "--student",
        "demo",
        "--teacher",
        "demo",
        "--tokens",
        "2M",
        "--lr",
        "3e-4",
        "--top-k",
        "8",
        "--lm-loss-weight",
        "0.25",
        "--no-bf16",
        "--eval-every",
        "7",
        "--out",
        str(tmp_path / "run"),
    ]
    args = build_parser().parse_args(argv)
    from_cli = settings_from_args(DistillSettings, args)
    job = {"student": "demo", "teacher": "demo", "tokens": 2_000_000, "lr": 3e-4, "top_k": 8}
    job |= {"lm_loss_weight": 0.25, "bf16": False, "eval_every": 7, "run_dir": str(tmp_path / "run")}
    from_job = settings_from_spec(DistillSettings, validate_spec("distill", job))
    assert from_cli == from_job
    assert from_cli.tokens == 2_000_000 and from_cli.bf16_autocast is False and from_cli.top_k == 8
    cli_spec = job_spec_from_args(args, DistillInputs, DistillSettings, JobOptions)
    assert validate_spec("distill", cli_spec) == validate_spec("distill", job)


def test_cli_and_job_build_the_same_search_settings(tmp_path):
    argv = ["search", "--model", "demo", "--target-params", "60%", "--distill-tokens", "0", "--no-latency"]
    argv += ["--max-width-prune", "0.3", "--prune-attention", "--layer-metric", "loss", "--out", str(tmp_path / "s")]
    args = build_parser().parse_args(argv)
    from_cli = settings_from_args(SearchSettings, args)
    job = {"model": "demo", "target_params": "60%", "tokens": 0, "measure_latency": False}
    job |= {"max_width_prune": 0.3, "prune_attention": True, "layer_metric": "loss"}
    from_job = settings_from_spec(SearchSettings, validate_spec("search", job))
    assert from_cli == from_job
    assert from_cli.space.max_width_prune == 0.3 and from_cli.space.prune_attention and not from_cli.measure_latency


@pytest.mark.parametrize(
    "kind, option, text, key, value, message",
    [
        ("distill", "--lr", "nan", "lr", math.nan, "must be a finite number, got nan"),
        ("distill", "--tokens", "-5", "tokens", -5, "must be greater than 0, got -5"),
        ("distill", "--lm-loss-weight", "1.5", "lm_loss_weight", 1.5, "must be between 0 and 1, got 1.5"),
        ("distill", "--temperature", "inf", "temperature", math.inf, "must be a finite number, got inf"),
        ("search", "--tolerance", "-0.1", "tolerance", -0.1, "must be greater than 0, got -0.1"),
        ("search", "--max-depth-prune", "1", "max_depth_prune", 1.0, "must be at least 0 and below 1, got 1.0"),
        ("bench", "--warmup", "-1", "warmup", -1, "must be 0 or more, got -1"),
    ],
)
def test_a_bad_value_is_refused_by_the_cli_and_a_job_with_the_same_message(
    kind, option, text, key, value, message, tmp_path, capsys
):
    base = {
        "distill": (["--student", "demo", "--teacher", "demo", "--tokens", "100k"], {"student": "demo"}),
        "search": (["--model", "demo", "--target-params", "50%"], {"model": "demo", "target_params": "50%"}),
        "bench": (["--model", "demo"], {"model": "demo"}),
    }
    argv, spec = base[kind]
    out = [] if kind == "bench" else ["--out", str(tmp_path / "out")]
    assert main([kind, *argv, option, text, *out]) == 2
    err = capsys.readouterr().err
    assert f"{option}: {message}" in err and len(err.strip().splitlines()) == 1
    spec = {**spec, "teacher": "demo", "tokens": 100_000} if kind == "distill" else spec
    with pytest.raises(ValueError, match=f"'{key}': {message}"):
        validate_spec(kind, {**spec, key: value})
    assert not (tmp_path / "out").exists()


def test_the_library_refuses_what_the_cli_and_jobs_refuse():
    with pytest.raises(ValueError, match="lr: must be a finite number"):
        DistillSettings(tokens=100_000, lr=math.nan).validate()
    with pytest.raises(ValueError, match="max_width_prune: must be at least 0 and below 1"):
        SearchSpace(max_width_prune=1.0).validate()
    with pytest.raises(ValueError, match="teacher_top_k: must be greater than 0"):
        StudySettings(teacher_top_k=0).validate()


def test_layer_metric_choices_come_from_the_library():
    assert LAYER_METRIC_OPTIONS == tuple(m or "none" for m in LAYER_METRICS)
    for command, kind in (("importance", "importance"), ("prune", "prune")):
        assert tuple(_command_actions(command)["layer_metric"].choices) == LAYER_METRIC_OPTIONS
        with pytest.raises(ValueError, match="must be one of 'kl', 'loss', 'cosine', 'none', got 'best'"):
            get_kind(kind).fields["layer_metric"].check("best")
    search_metrics = tuple(m for m in LAYER_METRICS if m is not None)
    assert tuple(_command_actions("search")["layer_metric"].choices) == search_metrics


def test_importing_the_jobs_package_imports_no_kind_until_one_is_asked_for():
    code = (
        "import sys, hybridlab.jobs as jobs\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.startswith('hybridlab.jobs.kinds.'))\n"
        "assert loaded() == [], loaded()\n"
        "assert 'distill' in jobs.kind_names() and loaded() == [], loaded()\n"
        "jobs.get_kind('bench')\n"
        "assert 'hybridlab.jobs.kinds.distill' not in sys.modules, loaded()\n"
        "assert jobs.get_kind('distill').name == 'distill' and 'hybridlab.jobs.kinds.distill' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---- the facility itself -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Inner:
    width: int = setting(4, check=positive, help="inner width")


@dataclass
class _Outer:
    budget: int = setting(parse=parse_token_count, help="a budget")
    rate: float = setting(0.5, check=positive, key="learning_rate")
    fast: bool = setting(True, flag="--slow")
    mode: str = setting("a", choices=("a", "b"))
    inner: _Inner = field(default_factory=_Inner)
    knob: float = 1.0  # library only


def test_declared_flattens_nested_settings_and_skips_plain_fields():
    items = {item.name: item for item in declared(_Outer)}
    assert list(items) == ["budget", "rate", "fast", "mode", "width"]
    assert items["budget"].required and not items["rate"].required
    assert items["rate"].key == "learning_rate" and items["rate"].flag == "--rate"
    assert items["fast"].flag == "--slow" and items["mode"].flag == "--mode"
    assert items["width"].default == 4 and items["width"].types == (int,)


def test_build_checks_every_value_and_names_it():
    built = build(_Outer, {"budget": 10, "width": 2, "knob": 3.0})
    assert built == _Outer(budget=10, inner=_Inner(width=2), knob=3.0)
    with pytest.raises(ValueError, match="^width: must be greater than 0, got 0$"):
        build(_Outer, {"budget": 10, "width": 0})
    with pytest.raises(ValueError, match="^--mode: must be one of 'a', 'b', got 'c'$"):
        build(_Outer, {"budget": 1, "mode": "c"}, label=lambda item: item.flag)
    with pytest.raises(ValueError, match="^budget is required$"):
        build(_Outer, {})
    with pytest.raises(ValueError, match="rate: must be a finite number"):
        check_settings(_Outer(budget=1, rate=math.nan))
