"""The one exception type for user mistakes: the CLIs print it as one sentence, without a traceback."""


class UserError(Exception):
    """Bad input the user can fix; the message names the file/line/key and what to do."""


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
