"""One error path for bad input.

A mistake in what the user gave (a path, a number, a file's contents) raises `UserError`: one
line that names the problem, the value and the fix. The CLI prints it as
`hybridlab <command>: error: <message>` with exit status 2 and no traceback, the dashboard shows
it in st.error, and a job records it as its error. Anything else is a bug and keeps its
traceback. `--debug` or HYBRIDLAB_DEBUG=1 shows the traceback of a user error too.

UserError is a ValueError, so code that catches ValueError keeps working; plain ValueError and
FileNotFoundError raised for bad input by older code count as user errors as well
(`is_user_error`).
"""

from __future__ import annotations

import os

DEBUG_ENV = "HYBRIDLAB_DEBUG"
SHOWN_CHARS = 80  # how much of a user's value a message repeats


class UserError(ValueError):
    """Bad input: one line naming the problem, the value and the fix."""

    def __init__(self, message: object):
        super().__init__(one_line(message))


# Exceptions that mean "the input is wrong", not "hybridlab is wrong".
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, USER_ERRORS)


def one_line(message: object) -> str:
    """The message with every run of whitespace (newlines included) made one space."""
    return " ".join(str(message).split())


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """repr(value), cut to about `limit` characters: a message never echoes a huge input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}... ({len(text):,} characters)"


def debug_enabled() -> bool:
    """Whether HYBRIDLAB_DEBUG asks for tracebacks of user errors."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
