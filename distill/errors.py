"""User mistakes: the one exception type for them and the ways raw failures become one sentence.

The CLI wrapper prints a UserError without a traceback; `require` and `read_utf8` turn a missing
package or a non-UTF-8 file into one."""
from __future__ import annotations

import functools
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input the user can fix; the message names the file/line/key and what to do."""


def user_errors(fn):
    """For CLI commands: user mistakes end as one sentence on stderr and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            import click

            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)

    return wrapper


def require(module: str, pip_name: str | None = None):
    """Import an optional heavy dependency, or say which `pip install` brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(
            f"this needs the Python package '{pip_name or module}' ({exc}); "
            f"install it with: pip install {pip_name or module}"
        ) from exc


def read_utf8(path: str | Path) -> str:
    """A text file's content (a UTF-8 byte-order mark is dropped); any other encoding is a UserError
    naming the file and the first bad byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        hint = " (it starts with a UTF-16 byte-order mark)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise UserError(f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start}){hint}; "
                        "save the file as UTF-8.") from None
