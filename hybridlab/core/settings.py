"""Settings declared once. An operation's settings are a dataclass whose public fields are made
with `setting(...)`: the field carries its help text, choices, checks, a parser for command-line
text and where it appears (the command line, job specs). From that one declaration the CLI
builds its options (hybridlab.cli.options) and the job kinds their spec fields
(hybridlab.jobs.registry.spec_fields); `build` makes the dataclass back from plain values.

    @dataclass
    class BenchSettings:
        repeats: int = setting(5, check=positive, help="timed runs; the median is reported")

A plain field (no `setting`) is a library-only knob that neither the CLI nor a job shows. A field
whose type is itself a settings dataclass (SearchSettings.space) is flattened: its settings appear
as if declared on the outer class, so field names must be unique across the two.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Iterator, Mapping

from hybridlab.core.errors import shown

Check = Callable[[Any], Any]  # returns the value (possibly normalised) or raises ValueError
LIBRARY_DEFAULT = object()  # Setting.cli_default when the CLI's default is the library's

# Sane upper bounds: a value beyond them is a typo (1e99 tokens) that would otherwise run for ever.
MAX_TOKENS = 10**12  # token budgets and caps
MAX_SEQ_LEN = 2**20  # tokens per sequence
MAX_BATCH_SIZE = 2**16
MAX_SAMPLES = 10**7  # calibration sequences
MAX_STEPS = 10**9  # counts of steps, repeats and candidates
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Setting:
    help: str = ""
    choices: tuple | None = None
    checks: tuple[Check, ...] = ()
    parse: Callable[[str], Any] | None = None  # command-line text -> value, e.g. "2M" -> 2_000_000
    cli: bool = True
    job: bool = True
    flag: str | None = None  # the CLI option when not --field-name (--no-field-name for a bool defaulting to True)
    key: str | None = None  # the job spec key when not the field name
    required: bool = False  # the CLI and jobs must give it, though the library has a default
    cli_required: bool = False  # only the CLI must give it
    cli_default: Any = LIBRARY_DEFAULT  # the CLI's default (command-line text) when it differs from the library's


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, check: Check | tuple = (), **options) -> Any:
    """A dataclass field with its Setting (keyword arguments as Setting's); no default = always required."""
    checks = check if isinstance(check, tuple) else (check,)
    if options.get("choices") is not None:
        options["choices"] = tuple(options["choices"])
    meta = {"setting": Setting(checks=checks, **options)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


@dataclass(frozen=True)
class Declared:
    """One declared setting as the CLI and the job kinds see it."""

    name: str  # the dataclass field
    types: tuple[type, ...]  # accepted types, without None
    nullable: bool
    default: Any  # MISSING when there is none
    setting: Setting

    @property
    def key(self) -> str:
        return self.setting.key or self.name

    @property
    def flag(self) -> str:
        if self.setting.flag:
            return self.setting.flag
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.default is True else f"--{dashed}"

    @property
    def required(self) -> bool:
        return self.default is MISSING or self.setting.required

    @property
    def cli_default(self) -> Any:
        return self.default if self.setting.cli_default is LIBRARY_DEFAULT else self.setting.cli_default

    def check(self, value: Any) -> Any:
        """The value after its type, choices and checks; ValueError with a message that names no field."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError("must be given")
        value = self._number(value)
        if self.setting.choices is not None and value not in self.setting.choices:
            raise ValueError(f"must be one of {', '.join(map(repr, self.setting.choices))}, got {shown(value)}")
        for check in self.setting.checks:
            value = check(value)
        return value

    def _number(self, value: Any) -> Any:
        """A setting typed int or float only: a whole number for int (no bool, no 2.5, no 2.0),
        a finite number for float (no bool, no NaN)."""
        if not self.types or not set(self.types) <= {int, float}:
            return value
        if float not in self.types:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"must be a whole number, got {shown(value)}")
            return int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"must be a number, got {shown(value)}")
        return finite(value)


def declared(cls: type) -> list[Declared]:
    """The settings of dataclass `cls` in field order, nested settings dataclasses flattened."""
    return list(_walk(cls))


def build(cls: type, values: Mapping[str, Any], label: Callable[[Declared], str] = lambda item: item.name):
    """`cls` from {field name: value}, every value checked; absent names keep their default.

    A failed check is a ValueError "<label>: <problem>", so the CLI names its flag and a job its key."""
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if _is_settings(hints[field.name]):
            kwargs[field.name] = build(hints[field.name], values, label)
        elif "setting" not in field.metadata:
            if field.name in values:
                kwargs[field.name] = values[field.name]
        else:
            item = _declared(field, hints[field.name])
            if field.name in values:
                try:
                    kwargs[field.name] = item.check(values[field.name])
                except ValueError as err:
                    raise ValueError(f"{label(item)}: {err}") from None
            elif item.default is MISSING:
                raise ValueError(f"{label(item)} is required")
    return cls(**kwargs)


def check_settings(obj: Any) -> None:
    """Run every declared check on the values `obj` holds (a settings dataclass's validate() calls this)."""
    build(type(obj), values_of(obj))


def values_of(obj: Any) -> dict[str, Any]:
    """{field name: value} of a settings dataclass, nested settings flattened."""
    values = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        values.update(values_of(value) if dataclasses.is_dataclass(value) else {field.name: value})
    return values


def _walk(cls: type) -> Iterator[Declared]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if _is_settings(hints[field.name]):
            yield from _walk(hints[field.name])
        elif "setting" in field.metadata:
            yield _declared(field, hints[field.name])


def _declared(field: dataclasses.Field, hint: Any) -> Declared:
    default = field.default if field.default_factory is MISSING else field.default_factory()
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    nullable = len(kinds) < len(args) or default is None
    return Declared(field.name, kinds, nullable, default, field.metadata["setting"])


def _is_settings(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


# ---- checks ------------------------------------------------------------------------------------


def finite(value):
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


def positive(value):
    if not finite(value) > 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return value


def non_negative(value):
    if not finite(value) >= 0:
        raise ValueError(f"must be 0 or more, got {value!r}")
    return value


def fraction(value):
    """0 to 1, both included."""
    if not 0 <= finite(value) <= 1:
        raise ValueError(f"must be between 0 and 1, got {value!r}")
    return value


def below_one(value):
    """0 included, 1 excluded: a share that may not be all."""
    if not 0 <= finite(value) < 1:
        raise ValueError(f"must be at least 0 and below 1, got {value!r}")
    return value


def at_least(minimum, why: str = ""):
    """A check: the value is `minimum` or more (`why` says what needs it)."""

    def check(value):
        if not finite(value) >= minimum:
            raise ValueError(f"must be at least {minimum}{f' ({why})' if why else ''}, got {shown(value)}")
        return value

    check.__name__ = f"at_least_{minimum}"
    return check


def at_most(maximum, why: str = ""):
    """A check: the value is `maximum` or less; a sane upper bound catches typos like 1e99."""

    def check(value):
        if not finite(value) <= maximum:
            limit = f"{maximum:,}" if isinstance(maximum, int) else f"{maximum}"
            raise ValueError(f"must be at most {limit}{f' ({why})' if why else ''}, got {_number_text(value)}")
        return value

    check.__name__ = f"at_most_{maximum}"
    return check


def _number_text(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"{float(value):.3g}"
    return shown(value)


def token_budget(value):
    """A token budget or cap: more than 0, at most MAX_TOKENS."""
    if not finite(value) > 0:
        raise ValueError(f"must be greater than 0, got {shown(value)} (a token budget)")
    return at_most(MAX_TOKENS, "a trillion tokens")(value)


def token_budget_or_zero(value):
    return at_most(MAX_TOKENS, "a trillion tokens")(non_negative(value))


def sequence_length(value):
    """Tokens per sequence: more than 0, at most MAX_SEQ_LEN (a model's own limit is checked where its config is read)."""
    return at_most(MAX_SEQ_LEN)(positive(value))


def batch_count(value):
    return at_most(MAX_BATCH_SIZE)(positive(value))


def sample_count(value):
    return at_most(MAX_SAMPLES)(positive(value))


def step_count(value):
    """A count of steps, repeats or candidates: more than 0, at most MAX_STEPS."""
    return at_most(MAX_STEPS)(positive(value))


def step_count_or_zero(value):
    return at_most(MAX_STEPS)(non_negative(value))


def seed_value(value):
    """A random seed: 0 to 2**32 - 1 (what numpy and torch both take)."""
    return at_most(MAX_SEED)(non_negative(value))


def one_of(*choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return check


# ---- command-line parsers ------------------------------------------------------------------------


def parse_token_count(text: str | int) -> int:
    """'2M' -> 2_000_000, '500k' -> 500_000, '1.5e6' -> 1_500_000."""
    if isinstance(text, int):
        return text
    value = str(text).strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000, "g": 1_000_000_000}.get(value[-1:], 1)
    number = value[:-1] if scale > 1 else value
    try:
        parsed = float(number) * scale
    except ValueError:
        raise ValueError(f"cannot read a token count from {text!r}; write e.g. 2M, 500k or 150000") from None
    if not math.isfinite(parsed):
        raise ValueError(f"token count {text!r} is not finite")
    return int(parsed)


def comma_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [part.strip() for part in str(text).split(",") if part.strip()]
