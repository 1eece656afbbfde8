"""Job kinds: what a job spec may contain and which function runs it.

A kind is registered once, by name, with its spec fields and a handler
`handler(spec: dict, ctx: JobContext) -> dict | None` (the returned dict becomes the
job's result). Handlers import heavy modules (torch, the engine) inside their body,
so the registry, the CLI and the dashboard can list and validate kinds cheaply.

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

REQUIRED = object()  # Field.default for keys the spec must give
PLUGINS_ENV = "HYBRIDLAB_JOB_PLUGINS"


@dataclass(frozen=True)
class Field:
    """One spec key. `check(value)` returns the normalized value or raises ValueError."""

    types: type | tuple[type, ...]
    default: Any = REQUIRED
    doc: str = ""
    check: Callable[[Any], Any] | None = None
    nullable: bool = False


@dataclass(frozen=True)
class JobKind:
    name: str
    fields: dict[str, Field]
    handler: Callable[[dict, Any], dict | None]
    doc: str = ""
    requires: tuple[str, ...] = ()  # modules the handler needs (checked at submission)
    check: Callable[[dict, Any], None] | None = None  # check(spec, store): cross-field rules; may normalize spec

    def missing_modules(self) -> list[str]:
        return [m for m in self.requires if not _module_exists(m)]


_KINDS: dict[str, JobKind] = {}
_builtins_loaded = False


def register_kind(kind: JobKind, replace: bool = False) -> JobKind:
    if kind.name in _KINDS and not replace and _KINDS[kind.name] != kind:
        raise ValueError(f"job kind {kind.name!r} is already registered; pass replace=True to override it")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    _load_builtins()
    if name not in _KINDS:
        raise ValueError(f"unknown job kind {name!r}; known kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def kind_names() -> list[str]:
    _load_builtins()
    return sorted(_KINDS)


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


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module("hybridlab.jobs.kinds")
        load_plugins()  # $HYBRIDLAB_JOB_PLUGINS: submitters and workers see the same kinds


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
