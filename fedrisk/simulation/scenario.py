"""Scenario files: load, validate, apply ``--quick``, resolve.

A scenario is a TOML file (see ``simulations/README.md`` and
:mod:`fedrisk.simulation.spec` for every key).  :func:`load_scenario` reads
it, checks every section, key, type and bound, the keys that depend on each
other (a csv source needs its tables, a dropout rate must leave at least
``faults.min-parties`` banks...) and the files it names, and returns a
:class:`Scenario` with every default filled in and every path absolute — the
*resolved* scenario each run records next to its results.  Any problem is
one :class:`~fedrisk.errors.ConfigError` line that names the key:
``partitioning.alpha: must be > 0, got -1``.

``[quick]`` holds overrides in the same sections (fewer rows, fewer rounds,
fewer sweep values); ``load_scenario(path, quick=True)`` merges them in, which
is what ``fedrisk simulate --quick`` and the tests run.
"""

from __future__ import annotations

import copy
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from fedrisk.errors import ConfigError
from fedrisk.simulation.spec import (
    HORIZONTAL,
    SCENARIO_SECTIONS,
    SECTIONS,
    SYNTHETIC_VERTICAL_PARTIES,
    Key,
    between,
    coerce,
    share_count,
    show,
)

#: Default coverage of the synthetic providers (the demo's story).
SYNTHETIC_COVERAGE = {"tax_bureau": 0.9, "platform": 0.6}


@dataclass(frozen=True)
class Scenario:
    """A validated scenario with every default filled in.

    Attributes
    ----------
    values : dict
        ``section -> key -> value`` for every key that applies to the mode
        (absent optional keys are left out); paths are absolute.
    sweep : dict or None
        ``{"parameter", "values", "reference"}`` when the scenario sweeps a key.
    source : pathlib.Path or None
        The file it was read from.
    quick : bool
        Whether the ``[quick]`` overrides were applied.
    """

    values: dict[str, dict[str, Any]]
    sweep: dict[str, Any] | None = None
    source: Path | None = None
    quick: bool = False
    quick_overrides: dict[str, Any] = field(default_factory=dict)

    # -- access ---------------------------------------------------------------
    def get(self, dotted: str, default: object = None) -> Any:
        """A value by dotted key (``privacy.epsilon``, ``partitioning.coverage.platform``)."""
        node: Any = self.values
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def name(self) -> str:
        return str(self.values["scenario"]["name"])

    @property
    def mode(self) -> str:
        return str(self.values["scenario"]["mode"])

    @property
    def seed(self) -> int:
        return int(self.values["scenario"]["seed"])

    @property
    def horizontal(self) -> bool:
        return self.mode == "horizontal"

    @property
    def party_names(self) -> list[str]:
        """The parties, in a fixed order (banks by index; vertical: label holder first)."""
        if self.horizontal:
            count, prefix = int(self.get("parties.count")), str(self.get("parties.prefix"))
            width = max(2, len(str(count - 1)))
            return [f"{prefix}_{i:0{width}d}" for i in range(count)]
        names = list(self.get("parties.names"))
        holder = str(self.get("parties.label-holder"))
        return [holder] + [n for n in names if n != holder]

    @property
    def rounds(self) -> int:
        """Rounds (horizontal) or most epochs (vertical): the progress bar's length."""
        return int(self.get("algorithm.rounds") if self.horizontal else self.get("algorithm.epochs"))

    # -- derived scenarios ------------------------------------------------------
    def with_value(self, dotted: str, value: object, *, keep_sweep: bool = False) -> "Scenario":
        """This scenario with one key changed, validated again (without its sweep unless ``keep_sweep``)."""
        raw = self.to_dict(include_sweep=keep_sweep)
        section, _, rest = dotted.partition(".")
        target = raw.setdefault(section, {})
        parts = rest.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
        changed = validate_scenario(raw, base_dir=Path("/"), source=self.source)
        return replace(changed, quick=self.quick, quick_overrides=self.quick_overrides)

    def to_dict(self, *, include_sweep: bool = True) -> dict[str, Any]:
        """The resolved scenario as plain TOML-able data (what ``scenario.resolved.toml`` holds)."""
        out = copy.deepcopy(self.values)
        if include_sweep and self.sweep is not None:
            out["sweep"] = {k: v for k, v in self.sweep.items() if v is not None}
        return out


# -- loading ------------------------------------------------------------------------


def load_scenario(path: str | Path, *, quick: bool = False) -> Scenario:
    """Read and validate a scenario file.

    Parameters
    ----------
    path : str or pathlib.Path
        The TOML file; relative paths inside it are relative to its folder.
    quick : bool
        Apply the file's ``[quick]`` overrides (a small version of the same scenario).

    Returns
    -------
    Scenario

    Raises
    ------
    ConfigError
        One line naming the file problem or the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"scenario file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path.name}: invalid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name}: not a UTF-8 text file") from None
    return validate_scenario(raw, base_dir=path.resolve().parent, source=path.resolve(), quick=quick)


def validate_scenario(raw: Mapping[str, Any], *, base_dir: Path, source: Path | None = None, quick: bool = False) -> Scenario:
    """Validate scenario data (as parsed from TOML) and fill in defaults; see :func:`load_scenario`."""
    data: dict[str, Any] = copy.deepcopy(dict(raw))
    _check_structure(data, allow=tuple(SECTIONS) + ("quick",), where="")
    overrides = data.pop("quick", {}) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"quick: expected a table of overrides, got {show(overrides)}")
    _check_structure(overrides, allow=tuple(SECTIONS), where="quick.")
    for section, table in overrides.items():
        for key, value in table.items():
            spec = SECTIONS[section][key]
            if spec.kind not in ("any_list", "any"):
                coerce(f"quick.{section}.{key}", spec, value)
    if quick:
        data = _merge(data, overrides)
    mode = _mode(data)
    values: dict[str, dict[str, Any]] = {}
    for section in SCENARIO_SECTIONS:
        values[section] = _section(section, data.get(section, {}), mode)
    _resolve_algorithm(values, mode)
    _resolve_data(values, mode, base_dir)
    _resolve_parties(values, mode)
    _check_faults(values, mode)
    scenario = Scenario(values=values, source=source, quick=quick, quick_overrides=overrides)
    if "sweep" in data:
        scenario = Scenario(values=values, sweep=_sweep(data["sweep"], scenario), source=source, quick=quick, quick_overrides=overrides)
    return scenario


def _check_structure(raw: Mapping[str, Any], *, allow: tuple[str, ...], where: str) -> None:
    for section, table in raw.items():
        if section not in allow:
            raise ConfigError(f"{where}{section}: unknown section (expected one of {', '.join(allow)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}{section}: expected a table ([{section}]), got {show(table)}")
        if section == "quick":
            continue
        for key in table:
            if key not in SECTIONS[section]:
                known = ", ".join(SECTIONS[section])
                raise ConfigError(f"{where}{section}.{key}: unknown key (expected one of {known})")


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for section, table in overrides.items():
        out.setdefault(section, {})
        for key, value in table.items():
            if isinstance(value, dict) and isinstance(out[section].get(key), dict):
                out[section][key] = {**out[section][key], **value}
            else:
                out[section][key] = value
    return out


def _mode(raw: Mapping[str, Any]) -> str:
    table = raw.get("scenario", {})
    if "mode" not in table:
        raise ConfigError("scenario.mode: missing (horizontal or vertical)")
    return str(coerce("scenario.mode", SECTIONS["scenario"]["mode"], table["mode"]))


def _section(section: str, table: Mapping[str, Any], mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in SECTIONS[section].items():
        dotted = f"{section}.{key}"
        if key in table:
            if mode not in spec.modes:
                raise ConfigError(f"{dotted}: applies to {spec.modes[0]} scenarios only (scenario.mode is {mode})")
            out[key] = coerce(dotted, spec, table[key])
        elif spec.required:
            raise ConfigError(f"{dotted}: missing ({spec.doc.rstrip('.')})")
        elif mode in spec.modes and spec.default is not None:
            out[key] = spec.default
    return out


def _resolve_algorithm(values: dict[str, dict[str, Any]], mode: str) -> None:
    expected = "fedavg" if mode == "horizontal" else "vertical_lr"
    name = values["algorithm"].setdefault("name", expected)
    if name != expected:
        raise ConfigError(f"algorithm.name: {name} does not run in {mode} scenarios (use {expected})")
    if mode == "vertical" and not values["encryption"]["enabled"]:
        raise ConfigError("encryption.enabled: vertical_lr always encrypts; remove the key or set it to true")


def _existing_file(dotted: str, value: str, base_dir: Path) -> str:
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (base_dir / path)
    if not path.is_file():
        raise ConfigError(f"{dotted}: file not found: {path.resolve()}")
    return str(path.resolve())


def _resolve_data(values: dict[str, dict[str, Any]], mode: str, base_dir: Path) -> None:
    data = values["data"]
    if data["source"] == "synthetic":
        for key in ("path", "tables", "test-path"):
            if key in data:
                raise ConfigError(f'data.{key}: only for data.source = "csv" (this scenario is synthetic)')
        data.pop("id-column", None)  # the generator's tables name their own columns
        data.pop("label-column", None)
        return
    if mode == "horizontal":
        if "path" not in data:
            raise ConfigError('data.path: required when data.source = "csv" (the pooled table the banks share)')
        data["path"] = _existing_file("data.path", data["path"], base_dir)
        if "test-path" in data:
            data["test-path"] = _existing_file("data.test-path", data["test-path"], base_dir)
    else:
        if "tables" not in data:
            raise ConfigError('data.tables: required when data.source = "csv" (party name = "table.csv")')
        data["tables"] = {name: _existing_file(f"data.tables.{name}", p, base_dir) for name, p in data["tables"].items()}
    data.pop("rows", None)


def _resolve_parties(values: dict[str, dict[str, Any]], mode: str) -> None:
    if mode == "horizontal":
        return
    parties, data = values["parties"], values["data"]
    synthetic = data["source"] == "synthetic"
    known = list(SYNTHETIC_VERTICAL_PARTIES) if synthetic else list(data["tables"])
    names = parties.setdefault("names", list(known))
    for name in names:
        if name not in known:
            where = "synthetic party" if synthetic else "party without a table in data.tables"
            raise ConfigError(f"parties.names: {name!r} is not a {where} (expected one of {', '.join(known)})")
    if not synthetic and sorted(names) != sorted(known):
        missing = sorted(set(known) - set(names))
        raise ConfigError(f"parties.names: data.tables has table(s) for {', '.join(missing)} not named here")
    holder = parties["label-holder"]
    if holder not in names:
        raise ConfigError(f"parties.label-holder: {holder!r} is not one of parties.names ({', '.join(names)})")
    if synthetic and holder != "bank":
        raise ConfigError("parties.label-holder: the synthetic data's labels are the bank's; use 'bank'")
    if len(names) < 2:
        raise ConfigError("parties.names: a vertical federation needs the label holder and at least one feature holder")
    holders = [n for n in names if n != holder]
    defaults = {n: (SYNTHETIC_COVERAGE[n] if synthetic else 1.0) for n in holders}
    coverage = values["partitioning"].get("coverage", {})
    for name in coverage:
        if name not in holders:
            raise ConfigError(f"partitioning.coverage.{name}: not a feature holder of this scenario ({', '.join(holders)})")
    values["partitioning"]["coverage"] = {**defaults, **coverage}


def _check_faults(values: dict[str, dict[str, Any]], mode: str) -> None:
    if mode != "horizontal":
        return
    faults, count = values["faults"], int(values["parties"]["count"])
    if faults["min-parties"] > count:
        raise ConfigError(f"faults.min-parties: {faults['min-parties']} exceeds parties.count = {count}")
    dropped = share_count(faults["dropout"], count)
    if count - dropped < faults["min-parties"]:
        raise ConfigError(
            f"faults.dropout: {show(faults['dropout'])} of {count} banks leaves {count - dropped} per round, "
            f"fewer than faults.min-parties = {faults['min-parties']}"
        )


# -- sweeps ---------------------------------------------------------------------------


def sweepable_key(dotted: str) -> Key:
    """The spec of a key a sweep may vary; raises a one-line error for anything else."""
    parts = dotted.split(".")
    if len(parts) == 3 and parts[:2] == ["partitioning", "coverage"]:
        return Key("float", None, "coverage of one provider", between(0, 1))
    if len(parts) != 2 or parts[0] not in SCENARIO_SECTIONS or parts[1] not in SECTIONS[parts[0]]:
        raise ConfigError(f"sweep.parameter: {dotted!r} is not a scenario key (e.g. privacy.epsilon, partitioning.alpha)")
    if dotted in ("scenario.name", "scenario.mode", "data.source", "data.path", "data.tables", "parties.names"):
        raise ConfigError(f"sweep.parameter: {dotted} cannot be swept")
    return SECTIONS[parts[0]][parts[1]]


def _sweep(table: Mapping[str, Any], scenario: Scenario) -> dict[str, Any]:
    parameter = str(coerce("sweep.parameter", SECTIONS["sweep"]["parameter"], table.get("parameter")) if "parameter" in table else "")
    if not parameter:
        raise ConfigError("sweep.parameter: missing (the dotted key to vary, e.g. privacy.epsilon)")
    spec = sweepable_key(parameter)
    if "values" not in table:
        raise ConfigError("sweep.values: missing (the values to run)")
    values = coerce("sweep.values", SECTIONS["sweep"]["values"], table["values"])
    if not isinstance(values, list):  # coerce has checked it is one (kind any_list)
        raise ConfigError(f"sweep.values: expected a list, got {show(values)}")
    section = parameter.split(".")[0]
    if section in SECTIONS and parameter.split(".")[1] in SECTIONS[section] and scenario.mode not in spec.modes:
        raise ConfigError(f"sweep.parameter: {parameter} applies to {spec.modes[0]} scenarios only (scenario.mode is {scenario.mode})")
    if parameter.startswith("privacy.") and parameter != "privacy.enabled" and not scenario.get("privacy.enabled"):
        raise ConfigError(f"sweep.parameter: sweeping {parameter} needs privacy.enabled = true")
    typed = []
    for i, value in enumerate(values):
        try:
            typed.append(coerce(f"sweep.values[{i}]", spec, value))
            scenario.with_value(parameter, typed[-1])
        except ConfigError as err:
            text = str(err)
            raise ConfigError(text if text.startswith("sweep.values") else f"sweep.values[{i}]: {text}") from None
    if len({show(v) for v in typed}) != len(typed):
        raise ConfigError("sweep.values: a value is repeated")
    reference = table.get("reference")
    if reference is not None:
        reference = coerce("sweep.reference", spec, reference)
        if show(reference) not in {show(v) for v in typed}:
            raise ConfigError(f"sweep.reference: {show(reference)} is not one of sweep.values")
    return {"parameter": parameter, "values": typed, "reference": reference}


def value_label(value: object) -> str:
    """A sweep value as it appears in folder names, tables and plots."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(value)
    return show(value).strip("'")


__all__ = ["Scenario", "load_scenario", "validate_scenario", "value_label", "sweepable_key", "HORIZONTAL"]
