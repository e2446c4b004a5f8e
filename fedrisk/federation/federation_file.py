"""FEDERATION.toml: who the parties are, where their tables are, what to train.

Example (horizontal, three banks)::

    [federation]
    name = "three-banks"
    mode = "horizontal"          # horizontal | vertical
    algorithm = "fedavg"         # fedavg (horizontal); vertical_lr | secureboost (vertical)

    [algorithm]                  # parameters of the algorithm
    rounds = 5
    aggregation = "ckks"         # ckks | plain
    model = "mlp"

    [validation]                 # rows held out for validation...
    fraction = 0.2
    seed = 42
    # table = "test.csv"         # ...or a separate table with the same schema

    [[parties]]
    name = "bank_a"
    role = "bank"                # bank (horizontal); label_holder | feature_holder (vertical)
    data = "bank_a.csv"          # relative to this file
    id-column = "id"
    label-column = "y"
    id-format = "opaque"         # opaque | credit_code
    # features = ["x0", "x1"]    # default: every other column, as float
    # categorical = ["grade"]
    # allow-missing = ["rating"]

Every error names the bad key, e.g. ``parties[1].label-column: ...``.
"""

from __future__ import annotations

import csv
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from fedrisk.errors import ConfigError
from fedrisk.protocols.fedavg import FedAvgConfig
from fedrisk.protocols.secureboost import SecureBoostConfig
from fedrisk.protocols.vertical_lr import VerticalLRConfig

_T = TypeVar("_T")

MODES = {"horizontal": ("fedavg",), "vertical": ("vertical_lr", "secureboost")}
_FEDERATION_KEYS = {"name", "mode", "algorithm"}
_VALIDATION_KEYS = {"fraction", "seed", "table"}
_PARTY_KEYS = {"name", "role", "data", "id-column", "label-column", "id-format", "features", "categorical", "allow-missing"}
_TOP_KEYS = {"federation", "algorithm", "validation", "parties"}


def _run_config_types(config: Any, keys: Mapping[str, str]) -> dict[str, type]:
    """Run-config key → the type of its field's default (FEDERATION.toml checks each ``[algorithm]`` value against it)."""
    defaults = {f.name: f.default for f in fields(config)}
    return {key: type(defaults[name]) for key, name in keys.items()}


#: ``[algorithm]`` keys per algorithm, from the protocols' specs. FedAvg's ``rounds`` is
#: the run config's ``num-rounds``; its simulation-only options are the simulator's.
ALGORITHM_KEYS: dict[str, dict[str, type]] = {
    "fedavg": {
        **{("rounds" if k == "num-rounds" else k): t for k, t in _run_config_types(FedAvgConfig, FedAvgConfig.TRAINING_KEYS).items()},
        **{k: t for k, t in _run_config_types(FedAvgConfig, FedAvgConfig.RUN_CONFIG_KEYS).items() if not k.startswith("sim-") and k != "dp-noise-seed"},
    },
    "vertical_lr": _run_config_types(VerticalLRConfig, VerticalLRConfig.RUN_CONFIG_KEYS),
    "secureboost": _run_config_types(SecureBoostConfig, SecureBoostConfig.RUN_CONFIG_KEYS),
}


@dataclass(frozen=True)
class PartyEntry:
    """One ``[[parties]]`` entry."""

    name: str
    role: str
    data: Path
    schema: dict
    index: int


@dataclass(frozen=True)
class FederationFile:
    """A validated FEDERATION.toml."""

    path: Path
    name: str
    mode: str
    algorithm: str
    params: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    parties: tuple[PartyEntry, ...] = ()


def _expect(value: object, kind: type[_T], key: str) -> _T:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _unknown(keys: set[str], allowed: set[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise ConfigError(f"{where}{'.' if where else ''}{extra[0]}: unknown key (expected one of {', '.join(sorted(allowed))})")


def _header_columns(path: Path, key: str) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle))
    except StopIteration:
        raise ConfigError(f"{key}: {path} is empty") from None
    except OSError as err:
        raise ConfigError(f"{key}: cannot read {path}: {err.strerror}") from None


def party_entry(raw: object, index: int, base: Path, mode: str, *, where: str | None = None, local_data: bool = True) -> PartyEntry:
    """Validate one party's declaration; ``local_data=False`` skips reading its table (another host holds it)."""
    where = where if where is not None else f"parties[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    _unknown(set(raw), _PARTY_KEYS, where)
    for key in ("name", "role", "data", "id-column"):
        if key not in raw:
            raise ConfigError(f"{where}.{key}: missing")
    name = str(_expect(raw["name"], str, f"{where}.name"))
    role = str(_expect(raw["role"], str, f"{where}.role"))
    roles = ("bank",) if mode == "horizontal" else ("label_holder", "feature_holder")
    if role not in roles:
        raise ConfigError(f"{where}.role: {role!r} is not a {mode} role ({', '.join(roles)})")
    data = Path(str(_expect(raw["data"], str, f"{where}.data")))
    data = data if data.is_absolute() else (base / data)
    if not local_data:
        return PartyEntry(name=name, role=role, data=data, schema={}, index=index)
    if not data.exists():
        raise ConfigError(f"{where}.data: file not found: {data}")
    id_column = str(_expect(raw["id-column"], str, f"{where}.id-column"))
    label = raw.get("label-column")
    if label is not None:
        label = str(_expect(label, str, f"{where}.label-column"))
    needs_label = role in ("bank", "label_holder")
    if needs_label and label is None:
        raise ConfigError(f"{where}.label-column: a {role} needs its label column")
    if not needs_label and label is not None:
        raise ConfigError(f"{where}.label-column: a feature holder has no labels")
    columns = _header_columns(data, f"{where}.data")
    for key, column in (("id-column", id_column), ("label-column", label)):
        if column is not None and column not in columns:
            raise ConfigError(f"{where}.{key}: column {column!r} is not in {data.name}")
    features = raw.get("features")
    if features is None:
        features = [c for c in columns if c not in (id_column, label)]
    elif not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ConfigError(f"{where}.features: expected a list of column names")
    for key in ("categorical", "allow-missing"):
        listed = raw.get(key, [])
        if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
            raise ConfigError(f"{where}.{key}: expected a list of column names")
    for key, listed in (("features", features), ("allow-missing", raw.get("allow-missing", []))):
        absent = [c for c in listed if c not in columns]
        if absent:
            raise ConfigError(f"{where}.{key}: column {absent[0]!r} is not in {data.name}")
    if id_column in features or (label is not None and label in features):
        raise ConfigError(f"{where}.features: the ID and label columns cannot be features")
    categorical = set(raw.get("categorical", []))
    unknown = sorted(categorical - set(features))
    if unknown:
        raise ConfigError(f"{where}.categorical: {unknown[0]!r} is not a feature")
    id_format = str(raw.get("id-format", "opaque"))
    if id_format not in ("opaque", "credit_code"):
        raise ConfigError(f"{where}.id-format: expected 'opaque' or 'credit_code', got {id_format!r}")
    schema = {
        "id_column": id_column,
        "features": {f: ("category" if f in categorical else "float") for f in features},
        "id_format": id_format,
        "allow_missing": list(raw.get("allow-missing", [])),
    }
    if label is not None:
        schema["label_column"] = label
    return PartyEntry(name=name, role=role, data=data.resolve(), schema=schema, index=index)


def load_federation_file(path: Path, *, local_data: bool = True) -> FederationFile:
    """Parse and validate FEDERATION.toml; raises :class:`ConfigError` naming the bad key.

    ``local_data=False`` is for a coordinator whose parties run on their own hosts:
    their tables are not read (nor needed) here.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"federation file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path.name}: not valid TOML: {err}") from None
    _unknown(set(raw), _TOP_KEYS, "")
    fed = raw.get("federation")
    if not isinstance(fed, dict):
        raise ConfigError("federation: missing [federation] table")
    _unknown(set(fed), _FEDERATION_KEYS, "federation")
    mode = str(fed.get("mode", "horizontal"))
    if mode not in MODES:
        raise ConfigError(f"federation.mode: expected one of {', '.join(MODES)}, got {mode!r}")
    algorithm = str(fed.get("algorithm", MODES[mode][0]))
    if algorithm not in MODES[mode]:
        raise ConfigError(f"federation.algorithm: {algorithm!r} is not a {mode} algorithm ({', '.join(MODES[mode])})")
    params_raw = raw.get("algorithm", {})
    if not isinstance(params_raw, dict):
        raise ConfigError("algorithm: expected a table")
    allowed = ALGORITHM_KEYS[algorithm]
    _unknown(set(params_raw), set(allowed), "algorithm")
    params: dict[str, int | float | str | bool] = {k: _expect(v, allowed[k], f"algorithm.{k}") for k, v in params_raw.items()}
    for key in ("rounds", "epochs", "trees", "depth", "bins", "batch-size", "local-epochs", "n-jobs"):
        if key in params and int(params[key]) < 1:
            raise ConfigError(f"algorithm.{key}: must be >= 1, got {params[key]}")
    if "subsample" in params and not 0 < float(params["subsample"]) <= 1:
        raise ConfigError(f"algorithm.subsample: must be in (0, 1], got {params['subsample']}")
    if "bins" in params and not 2 <= int(params["bins"]) <= 255:
        raise ConfigError(f"algorithm.bins: must be between 2 and 255, got {params['bins']}")
    if "min-parties" in params and int(params["min-parties"]) < 2:
        raise ConfigError(f"algorithm.min-parties: must be >= 2 (one bank's aggregate is its own model), got {params['min-parties']}")
    for key in ("c", "learning-rate", "round-timeout", "dp-epsilon", "dp-clip"):
        if key in params and not float(params[key]) > 0:
            raise ConfigError(f"algorithm.{key}: must be > 0, got {params[key]}")
    if "dp-delta" in params and not 0 < float(params["dp-delta"]) < 1:
        raise ConfigError(f"algorithm.dp-delta: must be between 0 and 1, got {params['dp-delta']}")
    if "aggregation" in params and params["aggregation"] not in ("ckks", "plain"):
        raise ConfigError(f"algorithm.aggregation: expected 'ckks' or 'plain', got {params['aggregation']!r}")
    validation = raw.get("validation", {"fraction": 0.2, "seed": 42})
    if not isinstance(validation, dict):
        raise ConfigError("validation: expected a table")
    _unknown(set(validation), _VALIDATION_KEYS, "validation")
    if "table" in validation and mode == "vertical":
        raise ConfigError(
            "validation.table: vertical federations validate on a fraction of the label holder's rows (every party must hold them); use validation.fraction"
        )
    if "table" in validation and local_data:
        table = Path(str(validation["table"]))
        table = table if table.is_absolute() else path.parent / table
        if not table.exists():
            raise ConfigError(f"validation.table: file not found: {table}")
        validation = {**validation, "table": str(table.resolve())}
    elif "fraction" in validation:
        fraction = _expect(validation["fraction"], float, "validation.fraction")
        if not 0 < float(fraction) < 1:
            raise ConfigError(f"validation.fraction: must be between 0 and 1, got {fraction}")
    parties_raw = raw.get("parties")
    if not isinstance(parties_raw, list) or not parties_raw:
        raise ConfigError("parties: declare at least one [[parties]] entry")
    parties = tuple(party_entry(p, i, path.parent, mode, local_data=local_data) for i, p in enumerate(parties_raw))
    names = [p.name for p in parties]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"parties: name {duplicates[0]!r} is used twice")
    if mode == "horizontal" and len(parties) < 2:
        raise ConfigError("parties: horizontal federations need at least two banks")
    if mode == "vertical":
        holders = [p for p in parties if p.role == "label_holder"]
        if len(holders) != 1:
            raise ConfigError(f"parties: a vertical federation needs exactly one label_holder, got {len(holders)}")
        if len(parties) < 2:
            raise ConfigError("parties: a vertical federation needs at least one feature_holder")
    return FederationFile(
        path=path.resolve(),
        name=str(fed.get("name", path.stem)),
        mode=mode,
        algorithm=algorithm,
        params=params,
        validation=validation,
        parties=parties,
    )
