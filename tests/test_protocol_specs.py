"""One spec per protocol (fedrisk/protocols/): every step named there and only there, every message type
covered once, unique names, and each config read from a run config with its defaults and one-line errors."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

import fedrisk.protocols
from fedrisk.errors import ConfigError
from fedrisk.protocols.step import Step
from fedrisk.wire import message_types as mt
from fedrisk.wire.exchange import CONTENT_CLASSES, ExchangeHeader, build_content, read_content

PACKAGE = Path(__file__).resolve().parents[1] / "fedrisk"
#: What a step name of a protocol looks like (the wire's names all have one of these prefixes).
STEP_NAME = re.compile(r"^(vlr|sb|psi|fedavg|keys|vertical)\.[a-z_]+$")


def _specs() -> dict[str, ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(fedrisk.protocols.__path__) if m.name != "step"]
    return {name: importlib.import_module(f"fedrisk.protocols.{name}") for name in names}


SPECS = _specs()


def test_every_protocol_has_a_spec():
    assert {"fedavg", "alignment", "vertical_lr", "secureboost"} <= set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_spec_lists_every_step_it_defines(name):
    module = SPECS[name]
    defined = [value for value in vars(module).values() if isinstance(value, Step)]
    assert defined, f"{name}: no Step constants"
    assert sorted(module.STEPS, key=repr) == sorted(defined, key=repr), f"{name}: STEPS and the module's Step constants differ"


# -- (a) no step name outside fedrisk/protocols/ ------------------------------------------------


def _docstrings(tree: ast.Module) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def step_literals(source: str, known: set[str]) -> list[tuple[int, str]]:
    """String constants of ``source`` that are step names: a known one, or one shaped like one.

    Docstrings are prose, and an operand of ``/`` is a path (``folder / "psi.json"``), not a step.
    """
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            skip.update(id(side) for side in (node.left, node.right))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip and (node.value in known or STEP_NAME.match(node.value))
    ]


def _known_names() -> set[str]:
    return {n for module in SPECS.values() for step in module.STEPS for n in (step.request, *step.replies)}


def test_the_literal_scan_finds_a_planted_step_name():
    source = '"""Docstring about "vlr.scores"."""\nstep = "vlr.score_sum"\npath = folder / "psi.json"\nother = "sb.round"\n'
    assert step_literals(source, {"sb.round"}) == [(2, "vlr.score_sum"), (4, "sb.round")]


def test_no_step_name_is_written_outside_the_protocol_specs():
    known = _known_names()
    found, scanned = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts[0] in ("protocols", "v1"):
            continue
        scanned += 1
        found += [f"{path.relative_to(PACKAGE.parent)}:{line} {value!r}" for line, value in step_literals(path.read_text(encoding="utf-8"), known)]
    assert scanned > 50
    assert found == [], "use the Step constants of fedrisk/protocols/<protocol>.py"


# -- (b) message types ---------------------------------------------------------------------------


def test_every_party_facing_message_type_is_one_step():
    steps = [step for module in SPECS.values() for step in module.STEPS]
    counts = Counter(step.message_type for step in steps)
    party_facing = set(mt.MESSAGE_TYPES) - {mt.IDENTITY}  # the runtime answers the identity query itself
    assert set(counts) <= set(mt.MESSAGE_TYPES), "a Step sends a message type the ClientApp does not register"
    assert set(counts) == party_facing, f"message types without a Step: {sorted(party_facing - set(counts))}"
    assert {t: n for t, n in counts.items() if n != 1} == {}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_content_classes_are_declared_and_choices_explained(name):
    for step in SPECS[name].STEPS:
        for classes in (step.request_classes, step.reply_classes):
            assert classes and set(classes) <= set(CONTENT_CLASSES), step
            assert len(set(classes)) == len(classes), step
        if len(step.request_classes) > 1 or len(step.reply_classes) > 1 or step.other_reply:
            assert step.varies, f"{step.request}: say what picks the class or the reply"


def test_a_step_refuses_to_name_one_class_where_the_sender_picks():
    from fedrisk.errors import ProtocolError
    from fedrisk.protocols import vertical_lr

    assert vertical_lr.SCORE_SUM.request_class == "aggregate"
    with pytest.raises(ProtocolError, match="vlr.score_sum"):
        vertical_lr.SCORE_SUM.reply_class
    assert vertical_lr.SCORE_SUM.replies == ("vlr.residual", "vlr.stop")


# -- (c) names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_request_and_reply_names_are_unique_in_a_protocol(name):
    steps = SPECS[name].STEPS
    requests = [step.request for step in steps]
    replies = [reply for step in steps for reply in step.replies]
    assert all(STEP_NAME.match(n) for n in requests + replies), name
    assert [n for n, c in Counter(requests).items() if c > 1] == []
    assert [n for n, c in Counter(replies).items() if c > 1] == []


def test_no_step_name_is_shared_by_two_protocols():
    owners: dict[str, set[str]] = {}
    for name, module in SPECS.items():
        for step in module.STEPS:
            for n in (step.request, *step.replies):
                owners.setdefault(n, set()).add(name)
    assert {n: sorted(o) for n, o in owners.items() if len(o) > 1} == {}


# -- (d) configs ---------------------------------------------------------------------------------


def _configs() -> list[type]:
    return [
        value
        for module in SPECS.values()
        for value in vars(module).values()
        if inspect.isclass(value) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__ and hasattr(value, "from_run_config")
    ]


def _run_config_keys(cls: type) -> dict[str, str]:
    """Run-config key → field: ``RUN_CONFIG_KEYS``, plus FedAvg's training keys."""
    return {**getattr(cls, "TRAINING_KEYS", {}), **cls.RUN_CONFIG_KEYS}


CONFIGS = _configs()


def test_every_protocol_with_parameters_has_its_config_in_its_spec():
    assert {c.__name__ for c in CONFIGS} == {"FedAvgConfig", "VerticalLRConfig", "SecureBoostConfig"}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_from_run_config_round_trips_the_defaults(cls):
    keys = _run_config_keys(cls)
    defaults = cls()
    assert set(keys.values()) == {f.name for f in dataclasses.fields(cls)}, "a setting the run config cannot reach"
    assert cls.from_run_config({}) == defaults
    assert cls.from_run_config({key: getattr(defaults, field) for key, field in keys.items()}) == defaults
    as_text = {key: str(getattr(defaults, field)) for key, field in keys.items()}  # `flwr run --run-config` and TOML strings
    assert cls.from_run_config(as_text) == defaults


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_from_run_config_refuses_a_bad_value_in_one_line(cls):
    defaults = cls()
    numeric = {key: field for key, field in _run_config_keys(cls).items() if isinstance(getattr(defaults, field), (bool, int, float))}
    assert numeric
    for key in numeric:
        with pytest.raises(ConfigError, match=re.escape(key)) as err:
            cls.from_run_config({key: "not-a-number"})
        assert "\n" not in str(err.value), key


def test_vertical_lr_switches_read_as_switches():
    from fedrisk.protocols.vertical_lr import VerticalLRConfig

    assert VerticalLRConfig.from_run_config({"momentum": "false"}).momentum is False
    assert VerticalLRConfig.from_run_config({"momentum": 0}).momentum is False
    assert VerticalLRConfig.from_run_config({"momentum": "True", "epochs": "12"}) == VerticalLRConfig(epochs=12)


def test_secureboost_setup_carries_the_models_names():
    from fedrisk.models.secureboost import LabelHolderSB
    from fedrisk.protocols.secureboost import SETUP, SecureBoostConfig, setup_params

    def received(config: dict) -> dict:
        header = ExchangeHeader("run", 0, SETUP.request, "coordinator", "bank", SETUP.request_class)
        return setup_params(read_content(build_content(header, config=config)))

    config = SecureBoostConfig(trees=5, depth=2, l2=0.5, bins=16, learning_rate=0.1, seed=9, n_jobs=2)
    params = received(config.setup_config())
    assert params == {**config.params().to_dict(), "random_state": 9, "n_jobs": 2}  # the bank's histogram workers
    assert (params["n_trees"], params["max_depth"], params["reg_lambda"], params["n_bins"]) == (5, 2, 0.5, 16)
    assert set(params) <= set(inspect.signature(LabelHolderSB).parameters), "the setup names are the model's keywords"
    assert received({}) == {**SecureBoostConfig().params().to_dict(), "random_state": SecureBoostConfig().seed, "n_jobs": SecureBoostConfig().n_jobs}
