"""Job kinds: what a job spec may contain and which function runs it.

A kind is a JobKind: its spec fields and a handler `handler(spec: dict, ctx: JobContext)
-> dict | None` (the returned dict becomes the job's result). The built-in kinds are found
through BUILTIN_KINDS, a table of kind name -> module whose `KIND` is that JobKind; a module
is imported the first time its kind is asked for, so naming or listing kinds imports none.
Their spec fields come from the operations' settings dataclasses (hybridlab.core.settings)
through `spec_fields`, so a setting is declared once for the CLI, the jobs and the library.

Extra kinds (a user's own, or the test suite's) come from plugin modules that call
`register_kind` when imported: $HYBRIDLAB_JOB_PLUGINS="mod1,mod2" (read by every
process on first use of the registry) or `hybridlab worker --plugin MODULE`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable

from hybridlab.core.settings import build, declared

REQUIRED = object()  # Field.default for keys the spec must give
PLUGINS_ENV = "HYBRIDLAB_JOB_PLUGINS"
BUILTIN_KINDS = {
    "importance": "hybridlab.jobs.kinds.importance",
    "prune": "hybridlab.jobs.kinds.prune",
    "distill": "hybridlab.jobs.kinds.distill",
    "eval": "hybridlab.jobs.kinds.evaluate",
    "bench": "hybridlab.jobs.kinds.bench",
    "search": "hybridlab.jobs.kinds.search",
    "latency-calibrate": "hybridlab.jobs.kinds.latency_calibrate",
}


@dataclass(frozen=True)
class Field:
    """One spec key. `check(value)` returns the normalized value or raises ValueError."""

    types: type | tuple[type, ...]
    default: Any = REQUIRED
    doc: str = ""
    check: Callable[[Any], Any] | None = None
    nullable: bool = False


@dataclass(frozen=True)
class Artifact:
    """Where a kind's named result goes: artifacts/<folder>/<name>; an unnamed job's name is <prefix>-<job id>."""

    folder: str
    prefix: str


@dataclass(frozen=True)
class JobKind:
    name: str
    fields: dict[str, Field]
    handler: Callable[[dict, Any], dict | None]
    doc: str = ""
    requires: tuple[str, ...] = ()  # modules the handler needs (checked at submission)
    check: Callable[[dict, Any], None] | None = None  # check(spec, store): cross-field rules; may normalize spec
    artifact: Artifact | None = None  # the named result it writes, if any (names are unique per folder)

    def missing_modules(self) -> list[str]:
        return [m for m in self.requires if not _module_exists(m)]


_KINDS: dict[str, JobKind] = {}
_plugins_loaded = False


def register_kind(kind: JobKind, replace: bool = False) -> JobKind:
    if kind.name in _KINDS and not replace and _KINDS[kind.name] != kind:
        raise ValueError(f"job kind {kind.name!r} is already registered; pass replace=True to override it")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    _load_env_plugins()
    if name not in _KINDS and name in BUILTIN_KINDS:
        module = importlib.import_module(BUILTIN_KINDS[name])
        register_kind(module.KIND)
    if name not in _KINDS:
        raise ValueError(f"unknown job kind {name!r}; known kinds: {', '.join(kind_names())}")
    return _KINDS[name]


def kind_names() -> list[str]:
    _load_env_plugins()
    return sorted(set(_KINDS) | set(BUILTIN_KINDS))


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import plugin modules named here and in $HYBRIDLAB_JOB_PLUGINS."""
    names = list(modules) + [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ValueError(
                f"job plugin module {name!r} cannot be imported ({err}); check its name and PYTHONPATH"
            ) from None


def _load_env_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        load_plugins()  # $HYBRIDLAB_JOB_PLUGINS: submitters and workers see the same kinds


# ---- spec fields from settings dataclasses (hybridlab.core.settings) ----------------------------


def spec_fields(*settings_classes: type) -> dict[str, Field]:
    """The spec fields of every setting the classes declare for jobs, keyed by spec key, in order."""
    fields = {}
    for cls in settings_classes:
        for item in declared(cls):
            if item.setting.job:
                fields[item.key] = Field(
                    item.types if len(item.types) > 1 else item.types[0],
                    default=REQUIRED if item.required else item.default,
                    doc=item.setting.help,
                    check=_field_check(item),
                    nullable=item.nullable,
                )
    return fields


def _field_check(item):
    # A lone check stays the very function declared, so code may ask `field.check is model_ref`.
    if item.setting.choices is None and len(item.setting.checks) <= 1:
        return item.setting.checks[0] if item.setting.checks else None
    return item.check


def settings_from_spec(cls: type, spec: dict):
    """Settings dataclass `cls` from a validated spec; its fields that jobs do not show keep their defaults."""
    values = {item.name: spec[item.key] for item in declared(cls) if item.setting.job and item.key in spec}
    return build(cls, values, label=lambda item: repr(item.key))


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
