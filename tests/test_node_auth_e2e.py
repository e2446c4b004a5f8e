"""Node authentication on real processes: who the SuperLink refuses, and what the party's operator sees.

One SuperLink (TLS, ``--enable-supernode-auth``) under a federation key folder
made with ``fedrisk keys init``; each case starts ``fedrisk node start`` as a
party would on its own host and asserts on the one line it prints. The last
case has a registered party node receive a run of another Flower App (its own
ClientApp): the party refuses it without running any of its code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from node_cli import node_start_argv

from fedrisk.crypto.pki_admin import init_federation_keys
from fedrisk.federation.local import LocalFederation

pytestmark = pytest.mark.e2e


def _keys(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedrisk.cli", "keys", *args], check=False, capture_output=True, text=True, cwd=cwd, timeout=120)


def _node(tmp: Path, name: str, fleet: int, ca: Path, key: Path) -> subprocess.Popen:
    argv = node_start_argv(
        name=name,
        role="bank",
        data=tmp / "bank.csv",
        label_column="y",
        superlink=f"127.0.0.1:{fleet}",
        root_certificates=ca,
        auth_key=key,
        state_dir=tmp / f"state-{name}-{key.parent.parent.name}",
    )
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _last_line(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else ""


@pytest.fixture(scope="module")
def superlink(tmp_path_factory, default_credit_dir):
    tmp = tmp_path_factory.mktemp("auth")
    pd.read_csv(default_credit_dir / "default_credit_homo_guest.csv").head(300).to_csv(tmp / "bank.csv", index=False)
    init_federation_keys(tmp / "fed", ["bank", "stranger", "runner"])
    init_federation_keys(tmp / "other", ["bank"])  # another federation: another CA
    with LocalFederation(tmp / "operator", [], {}, keys_dir=tmp / "fed") as operator:  # just the SuperLink
        yield tmp, operator


def test_a_node_whose_key_is_not_registered_is_refused(superlink):
    tmp, operator = superlink
    code, line = _last_line(_node(tmp, "stranger", operator.fleet_port, operator.ca_cert, tmp / "fed" / "nodes" / "stranger"))
    assert code == 2
    assert line.startswith(f"error: the SuperLink at 127.0.0.1:{operator.fleet_port} refused this node's key ")
    assert "it is not registered, or it was revoked" in line


def test_a_node_under_another_ca_fails_with_a_clear_tls_message(superlink):
    tmp, operator = superlink
    wrong_ca = tmp / "other" / "ca.crt"
    code, line = _last_line(_node(tmp, "bank", operator.fleet_port, wrong_ca, tmp / "fed" / "nodes" / "bank"))
    assert code == 2
    assert line == (
        f"error: TLS handshake with the SuperLink at 127.0.0.1:{operator.fleet_port} failed: its certificate is not "
        f"signed by the CA in {wrong_ca} (wrong --root-certificates?)"
    )


def test_a_revoked_node_is_dropped_and_refused(superlink):
    tmp, operator = superlink
    control = f"127.0.0.1:{operator.control_port}"
    registered = _keys("register", "bank", "--keys", "fed", "--superlink", control, cwd=tmp)
    assert registered.returncode == 0, registered.stderr
    own_key = tmp / "bank_host" / "keys" / "bank"  # the party's copy of its key, on its own host
    own_key.parent.mkdir(parents=True)
    shutil.copy2(tmp / "fed" / "nodes" / "bank", own_key)
    shutil.copy2(tmp / "fed" / "nodes" / "bank.pub", own_key.with_suffix(".pub"))
    node = _node(tmp, "bank", operator.fleet_port, operator.ca_cert, own_key)
    try:
        deadline = time.monotonic() + 90
        while not any(n["status"] == "online" for n in operator.admin().nodes()):
            assert node.poll() is None, node.stderr.read() if node.stderr else ""
            assert time.monotonic() < deadline, "the registered node never came online"
            time.sleep(0.5)
        revoked = _keys("revoke", "bank", "--keys", "fed", "--reason", "test", "--superlink", control, cwd=tmp)
        assert revoked.returncode == 0, revoked.stderr
        assert "it is refused from now on" in revoked.stderr
        code, line = _last_line(node, timeout=90)
    finally:
        if node.poll() is None:
            node.kill()
    assert code == 2
    assert "refused this node's key" in line and "revoked" in line
    # The operator's own tooling refuses it too, and Flower will not take the key back.
    again = _keys("register", "bank", "--keys", "fed", "--superlink", control, cwd=tmp)
    assert again.returncode == 2 and "party 'bank' was revoked" in again.stderr
    with pytest.raises(Exception, match="was revoked"):
        LocalFederation(tmp / "refused", [_settings(tmp)], {}, keys_dir=tmp / "fed").start()


def _settings(tmp: Path):
    from fedrisk.parties.settings import PartySettings

    return PartySettings(name="bank", role="bank", data=str(tmp / "bank.csv"), schema={"id_column": "id"}, state_dir=str(tmp / "s"))


FOREIGN_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "otherapp"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "someone"

[tool.flwr.app.components]
serverapp = "other_server:app"
clientapp = "other_client:app"

[tool.flwr.app.config]
out = "{out}"
"""

FOREIGN_SERVER = textwrap.dedent(
    """
    import json, pathlib, time
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes, deadline = [], time.time() + 60
        while not nodes and time.time() < deadline:
            nodes = list(grid.get_node_ids())
            time.sleep(0.5)
        messages = [Message(RecordDict({"q": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="query.whoami") for n in nodes]
        replies = list(grid.send_and_receive(messages, timeout=90))
        result = [{"error": r.error.reason if r.has_error() else None} for r in replies]
        pathlib.Path(context.run_config["out"]).write_text(json.dumps(result))
    """
)


def test_a_party_refuses_a_run_of_another_flower_app(superlink):
    """The coordinator submits a different Flower App: the party answers with one line and never imports its ClientApp."""
    from fedrisk.federation.local import write_flwr_config
    from fedrisk.parties.party_node import node_env

    tmp, operator = superlink
    control = f"127.0.0.1:{operator.control_port}"
    registered = _keys("register", "runner", "--keys", "fed", "--superlink", control, cwd=tmp)
    assert registered.returncode == 0, registered.stderr
    app, out, marker = tmp / "otherapp", tmp / "other-result.json", tmp / "other-client-imported.txt"
    app.mkdir()
    (app / "pyproject.toml").write_text(FOREIGN_PYPROJECT.format(out=out))
    (app / "other_server.py").write_text(FOREIGN_SERVER)
    (app / "other_client.py").write_text(
        f"import glob, pathlib\npathlib.Path({str(marker)!r}).write_text(repr(glob.glob('**/*', recursive=True)))\n"
        "from flwr.clientapp import ClientApp\napp = ClientApp()\n"
    )
    node = _node(tmp, "runner", operator.fleet_port, operator.ca_cert, tmp / "fed" / "nodes" / "runner")
    submit = None
    try:
        deadline = time.monotonic() + 90
        while not any(n["status"] == "online" for n in operator.admin().nodes()):
            assert node.poll() is None, node.stderr.read() if node.stderr else ""
            assert time.monotonic() < deadline, "the registered node never came online"
            time.sleep(0.5)
        home = tmp / "analyst-flwr"
        write_flwr_config(home, control, operator.ca_cert)
        submit = subprocess.Popen([str(Path(sys.executable).parent / "flwr"), "run", str(app), "local", "--stream"], env=node_env(home),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)  # fmt: skip
        deadline = time.monotonic() + 180
        while not out.exists():
            assert time.monotonic() < deadline, "the foreign ServerApp never got its replies"
            time.sleep(0.5)
        time.sleep(0.2)
        replies = json.loads(out.read_text())
        assert node.poll() is None, "the party node must keep serving"
    finally:
        for proc in (submit, node):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert len(replies) == 1
    reason = replies[0]["error"]
    assert reason.startswith("refused the run's app package someone/otherapp 1.0.0 (sha256 ")
    assert reason.endswith("its ClientApp is 'other_client:app', not fedrisk's 'fedrisk.parties.client_app:app'; "
                           "a fedrisk party runs only the installed fedrisk ClientApp")  # fmt: skip
    assert not marker.exists(), "the foreign ClientApp's code ran on the party"
    logs = "".join(p.read_text(errors="replace") for p in (tmp / "state-runner-fed" / "logs").glob("supernode-*"))
    assert "refused the run's app package someone/otherapp" in logs
    assert not list((tmp / "state-runner-fed").rglob("other_client.py")), "the foreign app package was installed on the party"
