"""Command-line options generated from settings dataclasses (hybridlab.core.settings).

An option's flag is the field name with dashes (--seq-len), or its declared flag (--data,
--no-bf16); its dest is always the field name, so `args.<field>` reads it. A bool that
defaults to False is a switch; one that defaults to True is a --no-... switch; one that defaults
to None (decide automatically) gets both --x and --no-x.
Values are parsed (e.g. "2M") and checked when settings or a job spec are built from
`args`, so a bad value is one ValueError naming the flag, before any work.
"""

from __future__ import annotations

import argparse

from hybridlab.core.settings import Declared, build, declared


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> None:
    """Add the CLI options of settings dataclass `cls` (field names in `only`, minus `skip`)."""
    for item in declared(cls):
        if item.setting.cli and item.name not in skip and (only is None or item.name in only):
            _add_option(parser, item, item.required or item.setting.cli_required or item.name in required)


def settings_from_args(cls: type, args: argparse.Namespace):
    """`cls` from the options `args` has (the others keep the library's defaults)."""
    return build(cls, _values(args, cls), label=lambda item: item.flag)


def job_spec_from_args(args: argparse.Namespace, *classes: type) -> dict:
    """A job spec from the options `args` has, keyed by the job's names and checked like settings."""
    spec = {}
    for cls in classes:
        values = _values(args, cls)
        for item in declared(cls):
            if item.setting.job and item.name in values:
                try:
                    spec[item.key] = item.check(values[item.name])
                except ValueError as err:
                    raise ValueError(f"{item.flag}: {err}") from None
    return spec


def _add_option(parser: argparse.ArgumentParser, item: Declared, required: bool) -> None:
    help_text = item.setting.help.replace("%", "%%") or None  # argparse formats help with %
    if item.types == (bool,) and item.default is None:  # unset = decide automatically; --x / --no-x force it
        parser.add_argument(item.flag, dest=item.name, action=argparse.BooleanOptionalAction, help=help_text)
        return
    if item.types == (bool,):
        action = "store_false" if item.default is True else "store_true"
        parser.add_argument(item.flag, dest=item.name, action=action, help=help_text)
        return
    parser.add_argument(
        item.flag,
        dest=item.name,
        type=_text_type(item),
        choices=item.setting.choices,
        required=required,
        default=None if required else item.cli_default,
        metavar=None if item.setting.choices else item.flag.lstrip("-").replace("-", "_").upper(),
        help=help_text,
    )


def _text_type(item: Declared) -> type:
    """What argparse converts the text to; parsed and composite values stay text until _values."""
    if item.setting.parse is not None or not set(item.types) <= {int, float}:
        return str
    return item.types[0]


def _values(args: argparse.Namespace, cls: type) -> dict:
    """{field name: value} of the options of `cls` that `args` has, command-line text parsed.
    An option left unset (None) that cannot be None keeps the library's default."""
    values = {}
    for item in declared(cls):
        if not item.setting.cli or not hasattr(args, item.name):
            continue
        value = getattr(args, item.name)
        if value is None and not item.nullable:
            continue
        if isinstance(value, str) and item.setting.parse is not None:
            try:
                value = item.setting.parse(value)
            except ValueError as err:
                raise ValueError(f"{item.flag}: {err}") from None
        values[item.name] = value
    return values
