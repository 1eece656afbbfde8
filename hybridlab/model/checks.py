"""Checks on a model folder from its config and file headers alone, before any weight is read.

    description = check_model("runs/pruned")        # UserError naming the problem and the fix

- the folder: "demo" or a directory with a config.json (`resolve_model_dir`);
- config.json: valid JSON that transformers can read (`read_config`);
- the family and its layer types: supported (`hybridlab.families.describe`; a NemotronH with
  mixture-of-experts layers is refused here, not after loading);
- the weights: safetensors headers and the shard index (`hybridlab.model.weight_files`);
  pickle-based `.bin` weights are refused unless `allow_pickle_weights` (they can run code when read).
- lengths: a sequence longer than the config's max_position_embeddings (`check_seq_len`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hybridlab.core.errors import UserError, one_line, shown
from hybridlab.core.paths import demo_teacher_dir
from hybridlab.families import ModelDescription, describe
from hybridlab.model.weight_files import INDEX_FILE, PICKLE_FILES, SINGLE_FILE, read_weight_files

DEMO_NAME = "demo"
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a config.json is a few kB
PICKLE_HELP = "--allow-pickle-weights (a job's 'allow_pickle_weights': true)"


def resolve_model_dir(ref: str | os.PathLike) -> Path:
    """The folder a model reference names: "demo" or a directory holding a config.json."""
    if str(ref) == DEMO_NAME:
        path = demo_teacher_dir()
        if not (path / CONFIG_FILE).exists():
            raise FileNotFoundError(
                f"the bundled demo teacher is missing at {path}; reinstall hybridlab from a full clone"
            )
        return path
    path = Path(ref).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model directory {path} does not exist; pass 'demo' or a local Hugging Face model directory"
        )
    if not path.is_dir() or not (path / CONFIG_FILE).exists():
        raise UserError(
            f"{path} is not a Hugging Face model directory (no config.json); pass 'demo' or a folder written by "
            "save_pretrained"
        )
    return path


def read_config(ref: str | os.PathLike, trust_remote_code: bool = False):
    """The model's transformers config; UserError for a config.json that is not JSON or that
    transformers cannot read (an unknown model_type, a missing field)."""
    path = resolve_model_dir(ref)
    file = path / CONFIG_FILE
    if not file.is_file():
        raise UserError(f"{file} is not a file; a model folder needs a config.json written by save_pretrained")
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(
            f"{file} is {file.stat().st_size:,} bytes, far too big for a config.json; is it the right file?"
        )
    try:
        values = json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{file} is not valid JSON ({one_line(err)}); re-save the model with save_pretrained") from None
    if not isinstance(values, dict):
        raise UserError(f"{file} holds a JSON {type(values).__name__}, not an object of settings; re-save the model")
    if "model_type" not in values:
        raise UserError(f"{file} names no 'model_type'; re-save the model with save_pretrained")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"transformers cannot read {file} (model_type {shown(values.get('model_type'))}: {one_line(err)}); "
            "check the file or update transformers"
        ) from None


def describe_config(config) -> ModelDescription:
    """The family and widths of `config`; UserError for a family or layer type hybridlab cannot prune."""
    try:
        return describe(config)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, ValueError):
            raise UserError(str(err)) from None
        name = getattr(config, "model_type", type(config).__name__)
        raise UserError(
            f"the {name} config lacks a size hybridlab needs ({one_line(err)}); re-save the model"
        ) from None


def check_weights(ref: str | os.PathLike, allow_pickle_weights: bool = False) -> None:
    """The folder's weight files are complete safetensors (headers and shard index checked), or,
    with `allow_pickle_weights`, pickle files transformers may read; UserError otherwise."""
    path = resolve_model_dir(ref)
    has_safetensors = (path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file()
    has_pickle = any((path / name).is_file() for name in PICKLE_FILES)
    if has_pickle and not has_safetensors:
        if allow_pickle_weights:
            return
        raise UserError(
            f"{path} holds only pickle weights (pytorch_model.bin), which can run code when read; convert them to "
            f"safetensors with save_pretrained(..., safe_serialization=True), or pass {PICKLE_HELP} if you trust them"
        )
    try:
        read_weight_files(path)
    except ValueError as err:
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(
            f"the weights in {path} cannot be read ({one_line(err)}); check the files' permissions"
        ) from None


def check_model(
    ref: str | os.PathLike, trust_remote_code: bool = False, allow_pickle_weights: bool = False
) -> ModelDescription:
    """Everything about a model folder that can be checked before loading it; its description."""
    description = describe_config(read_config(ref, trust_remote_code))
    check_weights(ref, allow_pickle_weights)
    return description


def max_positions(config) -> int | None:
    """The longest sequence the config allows (max_position_embeddings), or None when it names none."""
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_seq_len(config, seq_len: int, label: str = "seq_len") -> None:
    """UserError when `seq_len` is longer than the model's max_position_embeddings."""
    limit = max_positions(config)
    if limit is not None and seq_len > limit:
        raise UserError(
            f"{label} {seq_len:,} is longer than this model's max_position_embeddings ({limit:,}); "
            f"use {label} {limit:,} or less"
        )


def check_vocabularies(student_config, teacher_config, student: str = "student", teacher: str = "teacher") -> None:
    """UserError when two models do not share a vocabulary size (distillation compares their outputs)."""
    s_vocab, t_vocab = int(student_config.vocab_size), int(teacher_config.vocab_size)
    if s_vocab != t_vocab:
        raise UserError(
            f"the {student}'s vocabulary ({s_vocab:,} tokens) differs from the {teacher}'s ({t_vocab:,}); "
            "distillation compares next-token distributions, so prune the student from this teacher"
        )
