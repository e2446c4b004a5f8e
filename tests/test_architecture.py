"""The layout of docs/ARCHITECTURE.md, checked: which package may import which, no private names across
modules, and every message type served by exactly the roles the registry hands the party runtime."""

from __future__ import annotations

import ast
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedrisk.parties.protocol import ClosingProtocol, DurableProtocol, PartyProtocol
from fedrisk.parties.registry import PROTOCOLS
from fedrisk.wire import message_types as mt

PACKAGE = Path(__file__).resolve().parents[1] / "fedrisk"

#: Package (or top-level module) → the fedrisk packages it may import (docs/ARCHITECTURE.md, "may import").
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "logs": {"errors"},
    "v1": set(),
    "data": {"errors"},
    "wire": {"errors"},
    "crypto": {"errors"},
    "checkpoint": {"crypto", "errors"},
    "audit": {"crypto", "errors", "wire"},
    "models": {"crypto", "errors"},
    "protocols": {"errors", "models", "wire"},
    "parties": {"audit", "checkpoint", "crypto", "data", "errors", "logs", "models", "protocols", "wire"},
    "scoring": {"audit", "crypto", "data", "errors", "logs", "models", "v1"},
    "federation": {"audit", "checkpoint", "crypto", "data", "errors", "logs", "models", "parties", "protocols", "scoring", "v1", "wire"},
    "simulation": {"audit", "checkpoint", "crypto", "data", "errors", "federation", "logs", "models", "parties", "protocols", "wire"},
    "cli": {
        "audit",
        "checkpoint",
        "crypto",
        "data",
        "errors",
        "federation",
        "logs",
        "models",
        "parties",
        "protocols",
        "scoring",
        "simulation",
        "v1",
        "wire",
    },
}


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts == ("__init__.py",):
            continue
        top = parts[0] if len(parts) > 1 else path.stem
        yield top, path, ast.parse(path.read_text(encoding="utf-8"))


def _fedrisk_imports(tree: ast.Module) -> Iterator[tuple[ast.ImportFrom | ast.Import, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("fedrisk."):
            yield node, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fedrisk."):
                    yield node, alias.name


def test_every_package_has_a_rule():
    assert {top for top, _, _ in _modules()} <= set(MAY_IMPORT)


def test_packages_import_only_what_the_architecture_allows():
    crossings = []
    for top, path, tree in _modules():
        for node, module in _fedrisk_imports(tree):
            target = module.split(".")[1]
            if target != top and target not in MAY_IMPORT[top]:
                crossings.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {module}")
    assert crossings == []


def test_no_module_imports_a_private_name_of_another():
    private = []
    for _, path, tree in _modules():
        for node, module in _fedrisk_imports(tree):
            if isinstance(node, ast.ImportFrom):
                private += [
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert private == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module → the fedrisk modules it imports, lazy imports inside functions included."""
    modules = {_module_name(path): tree for _, path, tree in _modules()}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for node, module in _fedrisk_imports(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            submodules = {f"{module}.{n}" for n in names} & modules.keys()
            # ``from fedrisk.pkg import mod`` depends on ``mod``; ``from fedrisk.mod import x`` on ``mod``.
            targets = submodules if submodules else ({module} & modules.keys())
            graph[name] |= targets - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_fedrisk_modules_lazy_imports_included():
    assert _cycles(_import_graph()) == []


def test_the_tests_import_no_private_fedrisk_name():
    """A test that needs a helper tests a public name: renaming a private one must not break the suite."""
    private = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node, module in _fedrisk_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                private += [f"{path.name}:{node.lineno} {module}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


def test_no_module_reaches_into_another_modules_private_names():
    """``from fedrisk.federation import demo`` then ``demo._helper(...)`` is a private import too."""
    reaches = []
    for _, path, tree in _modules():
        aliases = set()
        for node, module in _fedrisk_imports(tree):
            if isinstance(node, ast.ImportFrom):
                aliases |= {a.asname or a.name for a in node.names if (PACKAGE.parent / (module + "." + a.name).replace(".", "/")).with_suffix(".py").exists()}
            else:
                aliases |= {a.asname for a in node.names if a.asname}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    reaches.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value.id}.{node.attr}")
    assert reaches == []


def test_the_party_runtime_imports_no_protocol_role():
    tree = ast.parse((PACKAGE / "parties" / "runtime.py").read_text(encoding="utf-8"))
    imported = {module for _, module in _fedrisk_imports(tree)}
    roles = {cls.__module__ for load in PROTOCOLS.values() for cls in load()}
    assert roles and not (imported & roles), "the runtime gets its roles from the registry"
    assert "fedrisk.parties.registry" not in imported


@pytest.fixture(scope="module")
def roles(tmp_path_factory) -> dict[str, list[PartyProtocol]]:
    out: dict[str, list[PartyProtocol]] = {}
    for role, load in PROTOCOLS.items():
        party = types.SimpleNamespace(settings=types.SimpleNamespace(name="p", role=role), state_dir=tmp_path_factory.mktemp(role))
        out[role] = [cls(party) for cls in load()]
    return out


def test_every_message_type_is_served_once_per_party_role(roles):
    served: dict[str, list[str]] = {}
    for role, protocols in roles.items():
        mine: list[str] = []
        for protocol in protocols:
            assert isinstance(protocol, PartyProtocol)
            mine += list(protocol.handlers())
        assert len(mine) == len(set(mine)), f"{role}: a message type answered by two roles"
        for message_type in mine:
            served.setdefault(message_type, []).append(role)
    assert set(served) | {mt.IDENTITY} == set(mt.MESSAGE_TYPES)  # the runtime answers the identity query itself


def test_durable_and_closing_roles_are_recognised_by_type(roles):
    by_name = {type(p).__name__: p for protocols in roles.values() for p in protocols}
    for name in ("LabelHolderVerticalLR", "FeatureHolderVerticalLR", "LabelHolderSecureBoost", "FeatureHolderSecureBoost"):
        assert isinstance(by_name[name], DurableProtocol), name
    assert isinstance(by_name["FeatureHolderSecureBoost"], ClosingProtocol)
    assert not isinstance(by_name["HorizontalParty"], DurableProtocol)


def test_fedavg_defaults_live_in_one_place_and_flwr_run_uses_the_same():
    import tomllib

    from fedrisk.errors import ConfigError
    from fedrisk.protocols.fedavg import FedAvgConfig

    app_config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert FedAvgConfig.from_run_config(app_config) == FedAvgConfig()  # `flwr run .` trains with the code's defaults
    assert FedAvgConfig.from_run_config({"learning-rate": "0.2", "num-rounds": 3}).learning_rate == 0.2
    with pytest.raises(ConfigError, match="learning-rate") as err:
        FedAvgConfig.from_run_config({"learning-rate": "fast"})
    assert "\n" not in str(err.value)


def test_secureboost_defaults_are_the_models():
    from fedrisk.errors import ConfigError
    from fedrisk.protocols.secureboost import SecureBoostConfig
    from fedrisk.models.secureboost_tree import BoostParams

    assert SecureBoostConfig().params() == BoostParams()
    config = SecureBoostConfig.from_run_config({"trees": 5, "depth": "2", "l2": 0.5, "learning-rate": 0.1})
    assert config.params() == BoostParams(n_trees=5, max_depth=2, learning_rate=0.1, reg_lambda=0.5)
    with pytest.raises(ConfigError, match="depth") as err:
        SecureBoostConfig.from_run_config({"depth": 40}).params()
    assert "\n" not in str(err.value)
