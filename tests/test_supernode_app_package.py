"""A party runs only the installed fedrisk ClientApp: the app-package check at the loading boundary.

Real FABs built with Flower's own builder (what ``flwr run`` submits) are handed
to the SuperNode's warm executor exactly as the SuperNode's Runtime API hands
them over (``Fab``, ``Run``). ``test_node_auth_e2e.py`` submits a foreign FAB to
a real SuperLink and party node.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run

from fedrisk.federation.local import write_app
from fedrisk.parties.warm_executor import ForeignAppError, WarmClientAppExecutor

REPO_ROOT = Path(__file__).resolve().parents[1]

FOREIGN_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "{publisher}"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
"""


def payload(marker: Path) -> str:
    """Module code that, if it were ever imported, leaves ``marker`` and lists the party's key files."""
    return f"import glob, pathlib\npathlib.Path({str(marker)!r}).write_text('imported: ' + repr(glob.glob('**/*.key', recursive=True)))\n"


def foreign_app(
    folder: Path, marker: Path, *, clientapp: str = "evil_client:app", publisher: str = "someone", extra: dict[str, str] | None = None, own_modules: bool = True
) -> Path:
    """A tiny Flower App with its own ClientApp (``evil_client``) and ServerApp."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(FOREIGN_PYPROJECT.format(name=folder.name, publisher=publisher, serverapp="evil_server:app", clientapp=clientapp))
    if own_modules:
        (folder / "evil_client.py").write_text(payload(marker) + "from flwr.clientapp import ClientApp\napp = ClientApp()\n")
        (folder / "evil_server.py").write_text("from flwr.serverapp import ServerApp\napp = ServerApp()\n")
    for name, text in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def as_task(content: bytes, fab_id: str = "fedrisk/fedrisk-run", version: str = "1.0.0") -> tuple[Run, Fab]:
    digest = hashlib.sha256(content).hexdigest()
    run = Run.create_empty(7)
    run.fab_id, run.fab_version, run.fab_hash = fab_id, version, digest
    return run, Fab(hash_str=digest, content=content, verifications={})


@pytest.fixture(autouse=True)
def flwr_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    return home


def _loaded(content: bytes, **kw: str):
    return WarmClientAppExecutor("127.0.0.1:1")._client_app(*as_task(content, **kw))


def test_fedrisks_own_run_app_is_accepted_and_the_installed_clientapp_runs(tmp_path, flwr_home):
    from fedrisk.parties.client_app import app as installed

    fab = build_fab_from_disk(write_app(tmp_path / "app", {"mode": "vertical"}, ["bank", "tax_bureau"]))
    assert _loaded(fab) is installed
    assert not (flwr_home / "apps").exists()  # nothing installed, nothing extracted


def test_a_fab_of_the_fedrisk_project_itself_is_accepted(tmp_path):
    """`flwr run .` in the fedrisk checkout: its files are the installed package's, byte for byte."""
    from fedrisk.parties.client_app import app as installed

    assert _loaded(build_fab_from_disk(REPO_ROOT), fab_id="fedrisk/fedrisk", version="0.1.0") is installed


def test_a_foreign_clientapp_is_refused_before_any_of_its_code_runs(tmp_path, flwr_home):
    marker = tmp_path / "imported.txt"
    fab = build_fab_from_disk(foreign_app(tmp_path / "evilapp", marker))
    digest = hashlib.sha256(fab).hexdigest()
    with pytest.raises(ForeignAppError) as refused:
        _loaded(fab, fab_id="someone/evilapp")
    assert str(refused.value) == (
        f"refused the run's app package someone/evilapp 1.0.0 (sha256 {digest[:16]}): its ClientApp is 'evil_client:app', "
        "not fedrisk's 'fedrisk.parties.client_app:app'; a fedrisk party runs only the installed fedrisk ClientApp"
    )
    assert not marker.exists() and "evil_client" not in sys.modules
    assert not (flwr_home / "apps").exists()


def test_fedrisks_component_names_with_other_code_are_refused(tmp_path):
    """Naming fedrisk's ClientApp is not enough: a package that ships its own copy of it, or any extra module, is refused."""
    marker = tmp_path / "imported.txt"
    own = (REPO_ROOT / "fedrisk" / "parties" / "client_app.py").read_text()
    cases = {
        "changed": ({"fedrisk/parties/client_app.py": payload(marker) + own}, "its fedrisk/parties/client_app.py differs from the installed fedrisk's"),
        "extra": ({"fedrisk/parties/helper.py": payload(marker)}, "it carries fedrisk/parties/helper.py, which the installed fedrisk does not have"),
        "beside": ({}, "it carries code that is not part of the installed fedrisk: evil_client.py"),
    }
    for label, (extra, problem) in cases.items():
        folder = foreign_app(
            tmp_path / f"app-{label}", marker, clientapp="fedrisk.parties.client_app:app", publisher="fedrisk", extra=extra, own_modules=not extra
        )
        (folder / "pyproject.toml").write_text(
            (folder / "pyproject.toml").read_text().replace("[tool.flwr.app]", '[tool.flwr.app]\nfab-include = ["**/*.py", "pyproject.toml"]')
        )
        fab = build_fab_from_disk(folder)
        with pytest.raises(ForeignAppError) as refused:
            _loaded(fab, fab_id=f"fedrisk/app-{label}")
        assert f": {problem}; a fedrisk party runs only" in str(refused.value), (label, str(refused.value))
    assert not marker.exists()


def test_a_broken_or_mismatched_package_is_refused_in_one_line(tmp_path):
    fab = build_fab_from_disk(write_app(tmp_path / "app", {}, ["bank"]))
    run, good = as_task(fab)
    executor = WarmClientAppExecutor("127.0.0.1:1")
    with pytest.raises(ForeignAppError, match="its content does not match its SHA-256"):
        executor._client_app(run, Fab(hash_str=good.hash_str, content=fab + b"x", verifications={}))
    with pytest.raises(ForeignAppError, match=r"it is not a Flower app package \(not a zip archive\)"):
        _loaded(b"#!/bin/sh\nrm -rf /\n")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", '[tool.flwr.app]\npublisher = "fedrisk"\n[tool.flwr.app.components]\nclientapp = "fedrisk.parties.client_app:app"\n')
        archive.writestr("../outside.py", "x = 1\n")
    with pytest.raises(ForeignAppError, match="it has a file outside the package: '../outside.py'"):
        _loaded(buffer.getvalue())


def test_the_supernode_refuses_subprocess_isolation():
    done = subprocess.run(
        [sys.executable, "-m", "fedrisk.parties.supernode", "--insecure", "--isolation", "subprocess"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --isolation subprocess: a fedrisk party runs only the installed fedrisk ClientApp, in process isolation; "
        "Flower's subprocess isolation would install and run whatever app package the coordinator submits"
    ]
