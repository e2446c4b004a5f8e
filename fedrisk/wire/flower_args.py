"""Reading Flower's command-line options where fedrisk's entry points wrap Flower's (SuperLink, SuperNode).

fedrisk's entry points pass Flower's options through unchanged; these read one
(``--name VALUE`` or ``--name=VALUE``) without parsing the rest, and take out
fedrisk's own before Flower sees them.
"""

from __future__ import annotations


def option_value(args: list[str], name: str) -> str | None:
    """The value of ``name`` in ``args``, or ``None`` when it is not given."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def pop_option(args: list[str], name: str, *, flag: bool = False) -> str | bool | None:
    """Remove ``name`` (and its value) from ``args``; the value, or for a ``flag`` whether it was there."""
    for i, arg in enumerate(args):
        if arg == name:
            del args[i]
            return True if flag else args.pop(i)
        if not flag and arg.startswith(name + "="):
            del args[i]
            return arg.split("=", 1)[1]
    return False if flag else None
