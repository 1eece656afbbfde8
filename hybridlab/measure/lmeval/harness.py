"""Run lm-evaluation-harness tasks on an in-memory model.

Local tasks are YAML files under hybridlab/lmeval/tasks (and any --include-path folder);
they load their data from JSON/JSONL files, so they run offline. `continuation_mc` is built
at run time from the model's validation tokens. Any other name is passed to lm-eval as a
standard task, which downloads its dataset: that needs the network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import yaml

from hybridlab.core.progress import ProgressFn
from hybridlab.measure.lmeval.continuation import build_continuation_items, write_jsonl

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "tasks"

# Local tasks whose data file is generated from the validation tokens at run time.
GENERATED_TASKS = {"continuation_mc"}


def _yaml_task_names(folder: Path) -> dict[str, Path]:
    names = {}
    for path in sorted(folder.rglob("*.yaml")):
        with open(path, encoding="utf-8") as handle:
            cfg = yaml.safe_load(handle) or {}
        if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
            names[cfg["task"]] = path
    return names


def local_tasks(include_path: str | os.PathLike | None = None) -> dict[str, Path]:
    """Task name -> YAML file for the bundled tasks plus those under `include_path`."""
    names = _yaml_task_names(LOCAL_TASKS_DIR)
    if include_path is not None:
        folder = Path(include_path)
        if not folder.is_dir():
            raise FileNotFoundError(f"task include path {folder} is not a folder: pass a folder of lm-eval YAML files")
        names.update(_yaml_task_names(folder))
    return names


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Forbid Hub access while only local tasks run (restores the environment afterwards)."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    if enabled:
        for key in keys:
            os.environ[key] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def prepare_task_manager(tasks: list[str], include_path=None):
    """An lm-eval TaskManager that knows `tasks`; ValueError naming any unknown task.

    Cheap for local tasks; a standard task name makes lm-eval index its thousands of built-in
    YAML files (several seconds), so that is only done when one is asked for.
    """
    if not tasks:
        raise ValueError("no lm-eval tasks given")
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ValueError(f"lm-eval tasks need lm-evaluation-harness ({err}): pip install 'hybridlab[eval]'") from err

    local = local_tasks(include_path)
    standard = [name for name in tasks if name not in local]
    paths = [str(LOCAL_TASKS_DIR)] + ([str(include_path)] if include_path is not None else [])
    manager = TaskManager(include_path=paths, include_defaults=bool(standard))
    unknown = [name for name in standard if name not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown task(s) {', '.join(unknown)}: use val_loss, a local task "
            f"({', '.join(sorted(local))}), or a task name from `lm-eval ls tasks`"
        )
    return manager


def check_task_inputs(tasks: list[str], val_tokens, tokenizer) -> None:
    """What the tasks need besides the model: a tokenizer, and validation tokens for generated tasks."""
    if tasks and tokenizer is None:
        raise ValueError("lm-eval tasks need a tokenizer, and this model has none: save one next to the model")
    needs_tokens = [name for name in tasks if name in GENERATED_TASKS]
    if needs_tokens and val_tokens is None:
        raise ValueError(
            f"task(s) {', '.join(needs_tokens)} are built from validation tokens: pass --val-tokens FILE.npy"
        )


def _generated_task_config(name: str, yaml_path: Path, val_tokens, tokenizer, folder: Path, seed: int) -> dict:
    """The task's YAML as a dict, with data_files pointing at a freshly generated JSONL."""
    with open(yaml_path, encoding="utf-8") as handle:
        cfg = yaml.safe_load(handle)
    items = build_continuation_items(val_tokens, tokenizer, seed=seed)
    data_file = write_jsonl(items, folder / f"{name}.jsonl")
    cfg["dataset_kwargs"] = {"data_files": {"validation": str(data_file)}}
    return cfg


def _flatten(results: dict, task: str) -> dict:
    """lm-eval reports {"acc,none": x, "acc_stderr,none": s, ...}; keep {"acc": x, "acc_stderr": s}."""
    flat = {}
    for key, value in results["results"].get(task, {}).items():
        metric, _, filter_name = key.partition(",")
        if metric in ("alias", "sample_len") or not isinstance(value, (int, float)):
            continue
        flat[metric if filter_name in ("", "none") else f"{metric}[{filter_name}]"] = float(value)
    samples = results.get("n-samples", {}).get(task, {})
    if samples:
        flat["samples"] = int(samples.get("effective", samples.get("original", 0)))
    return flat


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    val_tokens=None,
    limit: int | float | None = None,
    batch_size: int = 8,
    include_path: str | os.PathLike | None = None,
    num_fewshot: int | None = None,
    seed: int = 0,
    task_manager=None,
    progress: ProgressFn | None = None,
) -> dict[str, dict]:
    """{task: {metric: value, "samples": n}} for each lm-eval task, run one task at a time.

    Only local tasks: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set while they run. Standard
    tasks download their datasets (network needed) and may be cached by `datasets`.
    """
    check_task_inputs(tasks, val_tokens, tokenizer)
    manager = task_manager or prepare_task_manager(tasks, include_path)  # fails before model work
    local = local_tasks(include_path)
    standard = [name for name in tasks if name not in local]

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    was_training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    report = {}
    try:
        with tempfile.TemporaryDirectory(prefix="hybridlab-lmeval-") as folder, _offline(not standard):
            for i, name in enumerate(tasks):
                if progress is not None:
                    progress(i / len(tasks), f"lm-eval {name}", None)
                spec = name
                if name in GENERATED_TASKS and name in local:
                    spec = _generated_task_config(name, local[name], val_tokens, tokenizer, Path(folder), seed)
                results = simple_evaluate(
                    model=lm,
                    tasks=[spec],
                    num_fewshot=num_fewshot,
                    limit=limit,
                    task_manager=manager,
                    log_samples=False,
                    random_seed=seed,
                    numpy_random_seed=seed,
                    torch_random_seed=seed,
                    fewshot_random_seed=seed,
                )
                report[name] = _flatten(results, name)
    finally:
        model.train(was_training)
    if progress is not None:
        progress(1.0, "lm-eval done", None)
    return report
