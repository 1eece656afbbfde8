"""Job spec validation, done at submission so a bad spec never reaches the queue.

`validate_spec(kind, spec, store)` returns the spec with defaults filled in and
values normalized (model paths made absolute), or raises JobSpecError naming every
problem at once: unknown kind, missing or unknown keys, wrong types, bad values.
The helpers below are the `check` functions kinds use for their fields.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hybridlab.core.errors import UserError, shown
from hybridlab.core.paths import demo_teacher_dir
from hybridlab.core.settings import non_negative, one_of, positive  # noqa: F401  (plugins' checks; declared in core)
from hybridlab.jobs.guards import check_run_name
from hybridlab.jobs.registry import REQUIRED, Field, JobKind, get_kind
from hybridlab.store.artifacts import check_name

# A spec is a small JSON object: a longer string is a mistake (a pasted file, a runaway script).
MAX_TEXT_CHARS = 4096
MAX_SPEC_CHARS = 65_536
MAX_SPEC_DEPTH = 16  # lists and dicts inside each other


class JobSpecError(UserError):
    """A job spec that cannot run; the message lists every problem and the allowed keys."""


def validate_spec(kind_name: str, spec: dict, store=None) -> dict:
    kind = get_kind(kind_name)  # ValueError naming the known kinds
    if not isinstance(spec, dict):
        raise JobSpecError(f"a {kind.name} job spec must be a dict of options, got {type(spec).__name__}")
    _check_size(kind.name, spec)
    problems = [f"unknown key {shown(key)}" for key in spec if key not in kind.fields]
    clean = {}
    for key, fld in kind.fields.items():
        if key not in spec:
            if fld.default is REQUIRED:
                problems.append(f"missing key {key!r}" + (f" ({fld.doc})" if fld.doc else ""))
            else:
                clean[key] = copy.deepcopy(fld.default)
            continue
        try:
            clean[key] = _field_value(key, fld, spec[key])
        except ValueError as err:
            problems.append(str(err))
    if not problems and kind.missing_modules():
        problems.append(f"this installation lacks {', '.join(kind.missing_modules())}, which {kind.name} jobs need")
    if not problems and kind.check is not None:
        try:
            kind.check(clean, store)
        except ValueError as err:
            problems.append(str(err))
    if not problems:
        try:
            check_run_name(kind, clean, store)  # a name another run has is refused, never reused
        except ValueError as err:
            problems.append(str(err))
    if problems:
        keys_wrong = any(p.startswith(("unknown key", "missing key")) for p in problems)
        hint = ". " + describe_fields(kind) if keys_wrong else ""
        raise JobSpecError(f"invalid {kind.name} job spec: " + "; ".join(problems) + hint)
    json.dumps(clean)  # a spec is stored as JSON; the field types above guarantee this works
    return clean


def _check_size(kind: str, spec: dict) -> None:
    """Refuse oversize specs before looking at them: no string over MAX_TEXT_CHARS, at most
    MAX_SPEC_CHARS of JSON in all (a model path or a plan needs far less)."""
    for where, value in _strings(spec, ""):
        if len(value) > MAX_TEXT_CHARS:
            raise JobSpecError(
                f"{where or 'a key'} of this {kind} job spec is a string of {len(value):,} characters, more than "
                f"{MAX_TEXT_CHARS:,}; pass a file path or a name instead"
            )
    try:
        size = len(json.dumps(spec))
    except (TypeError, ValueError):
        return  # a value that is not JSON: the field checks name it
    if size > MAX_SPEC_CHARS:
        raise JobSpecError(
            f"this {kind} job spec is {size:,} characters of JSON, more than the {MAX_SPEC_CHARS:,} a spec "
            "may hold; pass file paths instead of file contents"
        )


def _strings(value, where: str, depth: int = 0):
    """(where, string) for every string in a spec, keys included."""
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_SPEC_DEPTH:
        raise JobSpecError(f"{where} nests lists or dicts more than {MAX_SPEC_DEPTH} deep; a job spec is flat")
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield "a key", key
            name = shown(key, 40)
            yield from _strings(item, f"{where}[{name}]" if where else name, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _strings(item, f"{where}[{i}]", depth + 1)


def describe_fields(kind: JobKind) -> str:
    parts = []
    for key, fld in kind.fields.items():
        default = "required" if fld.default is REQUIRED else f"default {fld.default!r}"
        parts.append(f"{key} ({_type_name(fld.types)}, {default})")
    return f"{kind.name} specs take: " + ", ".join(parts)


def _field_value(key: str, fld: Field, value):
    if value is None:
        if fld.nullable:
            return None
        raise ValueError(f"{key!r} must not be null")
    types = fld.types if isinstance(fld.types, tuple) else (fld.types,)
    if isinstance(value, bool) and bool not in types:
        raise ValueError(f"{key!r} must be {_type_name(fld.types)}, got the boolean {value!r}")
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if int not in types else value
    if not isinstance(value, types):
        raise ValueError(f"{key!r} must be {_type_name(fld.types)}, got {type(value).__name__} {shown(value)}")
    if isinstance(value, (dict, list)):
        try:
            value = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            raise ValueError(f"{key!r} must hold only numbers, strings, booleans, lists and dicts") from None
    if fld.check is not None:
        try:
            value = fld.check(value)
        except ValueError as err:
            raise ValueError(f"{key!r}: {err}") from None
    return value


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {
        bool: "true/false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        dict: "a dict",
        list: "a list",
    }
    return " or ".join(names.get(t, t.__name__) for t in types)


# ---- checks used by the kinds' fields -------------------------------------------------------


def model_ref(value: str) -> str:
    """'demo', a local Hugging Face model directory (made absolute: the worker may run elsewhere),
    or "job:N": the model job N will write, resolved when this job runs. That job's existence
    and kind need the store, so hybridlab.jobs.parents checks them at submission."""
    from hybridlab.store.job_parents import parse_job_ref  # imported here: only this function knows references

    if parse_job_ref(value) is not None:
        return value
    if value == "demo":
        if not (demo_teacher_dir() / "config.json").is_file():
            raise ValueError(
                f"the bundled demo teacher is missing at {demo_teacher_dir()}; "
                "reinstall hybridlab from a full clone or pass a local model folder"
            )
        return value
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"model {value!r} is neither 'demo' nor an existing directory; pass 'demo' or a local "
            "Hugging Face model folder"
        )
    if not (path / "config.json").is_file():
        raise ValueError(f"model folder {value!r} has no config.json; point at a saved Hugging Face model")
    return str(path.resolve())


def existing_file(value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"file {value!r} does not exist")
    return str(path.resolve())


def existing_dir(value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(f"folder {value!r} does not exist")
    return str(path.resolve())


def artifact_name(value: str) -> str:
    return check_name(value)
