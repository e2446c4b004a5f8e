"""Typed reads of an :class:`~fedrisk.wire.exchange.Exchange`'s public config values.

:meth:`Exchange.value` returns ``object``: a Flower config value (int, float,
str, bytes, bool or a list of them). These helpers convert it exactly as
``int(...)``, ``float(...)`` or ``bytes(...)`` would, and refuse a value of a
type that cannot be converted with a one-line :class:`ProtocolError` naming the
step and the key (where the bare conversion raised a ``TypeError``).

Like :meth:`Exchange.value`, each helper raises :class:`ProtocolError` for a
missing key unless a default is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, SupportsFloat, SupportsIndex, SupportsInt

from fedrisk.errors import ConfigError, ProtocolError
from fedrisk.wire.exchange import Exchange

__all__ = ["as_float", "as_int", "config_bytes", "config_float", "config_int", "config_strings", "settings_from_run_config"]


def _where(exchange: Exchange, name: str) -> str:
    return f"step {exchange.header.step!r}: config {name!r}"


def as_int(value: object, where: str) -> int:
    """``int(value)`` for a number or numeric text; :class:`ProtocolError` for any other type."""
    if isinstance(value, (str, bytes, bytearray, SupportsInt, SupportsIndex)):
        return int(value)
    raise ProtocolError(f"{where} is a {type(value).__name__}, not an integer")


def as_float(value: object, where: str) -> float:
    """``float(value)`` for a number or numeric text; :class:`ProtocolError` for any other type."""
    if isinstance(value, (str, bytes, bytearray, SupportsFloat, SupportsIndex)):
        return float(value)
    raise ProtocolError(f"{where} is a {type(value).__name__}, not a number")


def config_int(exchange: Exchange, name: str, default: object = ...) -> int:
    """The config value ``name`` as an ``int`` (``default`` when absent, if given)."""
    return as_int(exchange.value(name, default), _where(exchange, name))


def config_float(exchange: Exchange, name: str, default: object = ...) -> float:
    """The config value ``name`` as a ``float`` (``default`` when absent, if given)."""
    return as_float(exchange.value(name, default), _where(exchange, name))


def config_bytes(exchange: Exchange, name: str) -> bytes:
    """The config value ``name``, which must be bytes."""
    value = exchange.value(name)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ProtocolError(f"{_where(exchange, name)} is a {type(value).__name__}, not bytes")


def config_strings(exchange: Exchange, name: str) -> list[str]:
    """The config value ``name``, which must be a list of strings."""
    value = exchange.value(name)
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return [str(item) for item in value]
    raise ProtocolError(f"{_where(exchange, name)} is not a list of strings")


def config_bool(exchange: Exchange, name: str, default: object = ...) -> bool:
    """The config value ``name`` as a switch: a bool, 0/1 or true/false (``default`` if absent and given)."""
    value = exchange.value(name, default)
    try:
        return _as_bool(value)
    except ValueError:
        raise ProtocolError(f"{_where(exchange, name)} is not a switch (true/false): {value!r}") from None


def _as_bool(value: object) -> bool:
    """A run-config switch: a bool, 0/1 or true/false (``bool("false")`` would be True)."""
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(value)


def settings_from_run_config(settings: Any, keys: Mapping[str, str], run_config: Mapping[str, object]) -> dict[str, Any]:
    """Field values of the dataclass ``settings`` that a Flower run config sets, each cast to its default's type.

    ``keys`` maps run-config keys to field names; a key the run config does not set
    is left out (the dataclass keeps its default). A boolean field takes a bool,
    ``0``/``1`` or ``"true"``/``"false"`` (any case). A value that does not cast is
    one :class:`~fedrisk.errors.ConfigError` line naming the key.
    """
    kinds: dict[str, type] = {f.name: type(f.default) for f in fields(settings)}
    values: dict[str, Any] = {}
    for key, name in keys.items():
        if key in run_config:
            raw, kind = run_config[key], kinds[name]
            cast: Callable[[Any], object] = _as_bool if kind is bool else kind
            try:
                values[name] = cast(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"run config {key}: expected a {kind.__name__}, got {raw!r}") from None
    return values
