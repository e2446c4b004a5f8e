"""The scenario file's schema: every section, key, type, default and bound.

A scenario is a TOML file of sections (``[scenario]``, ``[data]``,
``[parties]``, ``[partitioning]``, ``[algorithm]``, ``[encryption]``,
``[privacy]``, ``[faults]``, ``[sweep]`` and ``[quick]``).  :data:`SECTIONS`
declares each key once; :func:`check_value` turns a bad value into a one-line
:class:`~fedrisk.errors.ConfigError` that names the key, e.g.
``partitioning.alpha: must be > 0, got -1``.  Keys that apply to one mode only
(``algorithm.rounds`` is horizontal, ``algorithm.epochs`` vertical) say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from fedrisk.errors import ConfigError

MODES = ("horizontal", "vertical")
HORIZONTAL, VERTICAL, BOTH = ("horizontal",), ("vertical",), MODES

#: The synthetic generator's parties and their vertical roles.
SYNTHETIC_VERTICAL_PARTIES = ("bank", "tax_bureau", "platform")

Check = Callable[[object], "str | None"]


@dataclass(frozen=True)
class Key:
    """One scenario key.

    Parameters
    ----------
    kind : str
        ``int``, ``float`` (``inf`` allowed only where a check allows it), ``str``,
        ``bool``, ``path``, ``str_list``, ``float_map`` (a table of name -> number),
        ``path_map`` (name -> path) or ``any_list``.
    default : object
        Value when the key is absent; ``None`` = no value (or required, see ``required``).
    doc : str
        One line for the docs and ``--help``.
    check : callable, optional
        Returns a problem (``"must be > 0"``) or ``None``.
    modes : tuple of str
        Modes the key applies to.
    required : bool
        The key must be given.
    """

    kind: str
    default: object
    doc: str
    check: Check | None = None
    modes: tuple[str, ...] = BOTH
    required: bool = False


#: What a numeric check answers for a value that is not a number (``coerce`` types int/float keys first).
NOT_A_NUMBER = "must be a number"


def positive(value: object) -> str | None:
    if not isinstance(value, (int, float)):
        return NOT_A_NUMBER
    return None if value > 0 and math.isfinite(value) else "must be > 0"


def positive_or_inf(value: object) -> str | None:
    if not isinstance(value, (int, float)):
        return NOT_A_NUMBER
    return None if value > 0 else "must be > 0 (inf = no DP)"


def at_least(low: float) -> Check:
    def check(value: object) -> str | None:
        if not isinstance(value, (int, float)):
            return NOT_A_NUMBER
        return None if value >= low and math.isfinite(value) else f"must be >= {low:g}"

    return check


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    left, right = ("(" if low_open else "["), (")" if high_open else "]")

    def check(value: object) -> str | None:
        if not isinstance(value, (int, float)):
            return NOT_A_NUMBER
        ok_low = value > low if low_open else value >= low
        ok_high = value < high if high_open else value <= high
        return None if ok_low and ok_high else f"must be in {left}{low:g}, {high:g}{right}"

    return check


def one_of(*choices: str) -> Check:
    def check(value: object) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def identifier(value: object) -> str | None:
    text = str(value)
    ok = text and all(c.isalnum() or c in "-_" for c in text)
    return None if ok else "must be letters, digits, '-' or '_'"


SECTIONS: dict[str, dict[str, Key]] = {
    "scenario": {
        "name": Key("str", None, "Name of the scenario (used in run folder names).", identifier, required=True),
        "description": Key("str", "", "What the scenario asks."),
        "mode": Key("str", None, "horizontal (several banks) or vertical (bank + data providers).", one_of(*MODES), required=True),
        "seed": Key("int", 7, "One seed for data, partitions, models, dropouts and DP noise.", at_least(0)),
        "engine": Key("str", "auto", "inprocess, ray (Flower's Simulation Engine) or auto (ray when installed).", one_of("auto", "inprocess", "ray")),
        "ledger": Key("bool", True, "Record every message in each party's signed audit ledger, as in production."),
        "party-timeout": Key("float", 600.0, "Seconds the coordinator waits for a party.", positive),
    },
    "data": {
        "source": Key("str", "synthetic", "synthetic (fedrisk's SME generator) or csv (your tables).", one_of("synthetic", "csv")),
        "rows": Key("int", 20_000, "Synthetic: SMEs in the bank's book (horizontal: the pool split among banks).", at_least(100)),
        "outsider-fraction": Key(
            "float", 0.1, "Synthetic vertical: share of a provider's table the bank does not know.", between(0, 1, high_open=True), VERTICAL
        ),
        "path": Key("path", None, "csv, horizontal: the pooled table the banks' shares are cut from.", modes=HORIZONTAL),
        "tables": Key("path_map", None, "csv, vertical: party name -> its table.", modes=VERTICAL),
        "id-column": Key("str", "id", "csv: the ID column."),
        "label-column": Key("str", "y", "csv: the 0/1 label column (the label holder's)."),
        "test-fraction": Key(
            "float",
            0.2,
            "Rows held out for evaluation (horizontal: a common hold-out; vertical: of the bank's rows).",
            between(0, 1, low_open=True, high_open=True),
        ),
        "test-path": Key("path", None, "csv, horizontal: a separate hold-out table instead of test-fraction.", modes=HORIZONTAL),
    },
    "parties": {
        "count": Key("int", 3, "Horizontal: number of banks.", between(2, 128), HORIZONTAL),
        "prefix": Key("str", "bank", "Horizontal: banks are named <prefix>_00, <prefix>_01...", identifier, HORIZONTAL),
        "names": Key("str_list", None, "Vertical: the parties (synthetic: bank, tax_bureau, platform).", modes=VERTICAL),
        "label-holder": Key("str", "bank", "Vertical: the party holding the labels.", modes=VERTICAL),
    },
    "partitioning": {
        "scheme": Key("str", "iid", "iid, dirichlet (label skew) or quantity (size skew).", one_of("iid", "dirichlet", "quantity"), HORIZONTAL),
        "alpha": Key("float", 0.5, "Dirichlet concentration: small = skewed.", positive, HORIZONTAL),
        "min-rows": Key("int", 20, "Fewest rows any bank may get (partitions are redrawn until it holds).", at_least(1), HORIZONTAL),
        "coverage": Key("float_map", None, "Vertical: provider -> share of the bank's SMEs it knows, in [0, 1].", modes=VERTICAL),
    },
    "algorithm": {
        "name": Key("str", None, "fedavg (horizontal) or vertical_lr (vertical); default by mode.", one_of("fedavg", "vertical_lr")),
        "rounds": Key("int", 10, "FedAvg rounds.", between(1, 1000), HORIZONTAL),
        "local-epochs": Key("int", 1, "Local epochs per round.", between(1, 100), HORIZONTAL),
        "learning-rate": Key("float", 0.01, "Adam learning rate.", positive, HORIZONTAL),
        "batch-size": Key("int", 256, "Mini-batch size.", at_least(1), HORIZONTAL),
        "model": Key("str", "logistic", "logistic or mlp.", one_of("logistic", "mlp"), HORIZONTAL),
        "hidden-units": Key("int", 32, "MLP width.", between(1, 4096), HORIZONTAL),
        "hidden-layers": Key("int", 2, "MLP depth.", between(1, 8), HORIZONTAL),
        "epochs": Key("int", 30, "Vertical LR: most epochs (early stopping on validation AUC).", between(1, 1000), VERTICAL),
        "c": Key("float", 1.0, "Vertical LR: inverse L2 strength (scikit-learn's C).", positive, VERTICAL),
        "patience": Key("int", 5, "Vertical LR: epochs without a better validation AUC before stopping.", at_least(1), VERTICAL),
    },
    "encryption": {
        "enabled": Key("bool", True, "CKKS-encrypted aggregation; false = plaintext FedAvg (a baseline; vertical LR always encrypts)."),
    },
    "privacy": {
        "enabled": Key("bool", False, "Local differential privacy on each bank's update (horizontal).", modes=HORIZONTAL),
        "epsilon": Key("float", 8.0, "Budget for the whole run; inf = no DP at all (the reference a sweep compares with).", positive_or_inf, HORIZONTAL),
        "delta": Key("float", 1e-5, "δ of the (ε, δ) guarantee.", between(0, 1, low_open=True, high_open=True), HORIZONTAL),
        "clip": Key("float", 1.0, "L2 bound of a bank's round update.", positive, HORIZONTAL),
    },
    "faults": {
        "dropout": Key("float", 0.0, "Share of banks that drop out of each round.", between(0, 1, high_open=True), HORIZONTAL),
        "stragglers": Key("float", 0.0, "Share of banks that answer late in each round.", between(0, 1, high_open=True), HORIZONTAL),
        "straggler-delay": Key("float", 0.5, "How late a straggler answers (seconds, within the deadline).", between(0, 300), HORIZONTAL),
        "min-parties": Key("int", 2, "Fewest banks a round may aggregate; fewer fails the run.", at_least(2), HORIZONTAL),
        "round-timeout": Key("float", 0.0, "Deadline of a round in seconds; 0 = scenario.party-timeout.", at_least(0), HORIZONTAL),
    },
    "sweep": {
        "parameter": Key("str", None, "Dotted key to vary, e.g. privacy.epsilon or partitioning.alpha.", required=True),
        "values": Key("any_list", None, "The values to run, one run each.", required=True),
        "reference": Key("any", None, "The value whose run the others are compared with (e.g. inf for DP)."),
    },
}

#: Sections that are tables of keys above; ``quick`` holds partial overrides of them.
SCENARIO_SECTIONS = tuple(s for s in SECTIONS if s != "sweep")


def kind_name(kind: str) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "bool": "true or false",
        "path": "a file path",
        "str_list": "a list of strings",
        "float_map": "a table of name = number",
        "path_map": "a table of name = path",
        "any_list": "a non-empty list",
        "any": "a value",
    }[kind]


def share_count(share: float, total: int) -> int:
    """How many of ``total`` parties a share means (half rounds up): 0.3 of 10 is 3."""
    return int(math.floor(share * total + 0.5 + 1e-9))


def show(value: object) -> str:
    """A value as the error message shows it (TOML-like)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return str(value)


def coerce(key_path: str, key: Key, value: object) -> object:
    """Check a raw TOML value's type and bounds; returns it typed (ints become floats for float keys)."""

    original = value

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{key_path}: {problem}, got {show(original)}")

    kind = key.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"expected {kind_name(kind)}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"expected {kind_name(kind)}")
        if math.isnan(float(value)):
            raise bad("must be a number")
        value = float(value)
    elif kind in ("str", "path"):
        if not isinstance(value, str) or (kind == "path" and not value):
            raise bad(f"expected {kind_name(kind)}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"expected {kind_name(kind)}")
    elif kind == "str_list":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise bad(f"expected {kind_name(kind)}")
        if len(set(value)) != len(value):
            raise bad("must not repeat a name")
    elif kind in ("float_map", "path_map"):
        if not isinstance(value, dict):
            raise bad(f"expected {kind_name(kind)}")
        for name, item in value.items():
            if kind == "float_map":
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    raise ConfigError(f"{key_path}.{name}: expected a number, got {show(item)}")
                if not 0.0 <= float(item) <= 1.0:
                    raise ConfigError(f"{key_path}.{name}: must be in [0, 1], got {show(item)}")
            elif not isinstance(item, str) or not item:
                raise ConfigError(f"{key_path}.{name}: expected a file path, got {show(item)}")
        value = {n: (float(v) if kind == "float_map" else v) for n, v in value.items()}
    elif kind == "any_list":
        if not isinstance(value, list) or not value:
            raise bad(f"expected {kind_name(kind)}")
    if key.check is not None and kind in ("int", "float", "str"):
        problem = key.check(value)
        if problem:
            raise bad(problem)
    return value
