"""A SuperLink that cannot start is given up after a few attempts, and ``fedrisk bench`` lists benchmarks only."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrisk.cli import app, benchmark_names
from fedrisk.errors import PartyUnavailableError
from fedrisk.federation.local import LocalFederation, failure_line
from fedrisk.parties.party_node import free_port


@pytest.mark.e2e  # starts (failing) SuperLink processes; about 4 s
def test_a_superlink_that_cannot_start_is_given_up_after_its_attempts_with_one_line(tmp_path):
    """Its Fleet port is held by this test's socket (bound, not listening): every start exits at once."""
    federation = LocalFederation(tmp_path / "run", [], {}, tls=False, node_auth=False, superlink_start_attempts=2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        federation.fleet_port, federation.control_port = held.getsockname()[1], free_port()
        try:
            with pytest.raises(PartyUnavailableError) as err:
                federation.restart_superlink()
        finally:
            federation.stop()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the SuperLink could not be restarted in 2 attempts: ")
    assert f"Fleet 127.0.0.1:{federation.fleet_port}" in message and "exited with code" in message
    assert f"Port in server address 127.0.0.1:{federation.fleet_port} is already in use" in message
    log = (federation.logs_dir / "superlink.log").read_text()
    assert log.count("Starting Flower SuperLink") == 2  # bounded: two starts, no recursion
    assert federation.superlink is None and federation.processes == []  # nothing dead left to "restart"


def test_the_failure_line_is_the_error_not_the_last_words():
    log = "INFO: Starting\nTraceback (most recent call last):\nSystemExit: Port 1 is already in use.\n\nERROR [uvicorn.error] Application startup failed. Exiting.\n"
    assert failure_line(log) == "Port 1 is already in use."
    assert failure_line("only this\n") == "only this"
    assert failure_line("") == "no output"


def test_bench_lists_benchmarks_not_their_private_helper_modules(tmp_path):
    for name in ("exchange.py", "_deployment.py", "psi.py", "notes.txt"):
        (tmp_path / name).write_text("")
    assert benchmark_names(tmp_path) == ["exchange", "psi"]

    runner = CliRunner()
    for name in ("no-such-bench", "_deployment"):  # a helper is not runnable as a benchmark either
        result = runner.invoke(app, ["bench", name])
        assert result.exit_code == 2
        listed = result.output.split("available:", 1)[1]
        assert "exchange" in listed and "_deployment" not in listed


def test_superlink_help_names_fedrisks_own_options_before_flowers(capsys, monkeypatch):
    import sys

    from fedrisk.federation import superlink

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() hands Flower its own argv

    with pytest.raises(SystemExit) as exc:
        superlink.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.index("--node-registry") < out.index("usage: flower-superlink")
    assert "--no-bundles" in out


def test_a_party_in_a_deep_state_folder_listens_on_a_short_private_socket(tmp_path):
    """Linux refuses Unix socket paths over 107 bytes; a deep state folder gets a private socket elsewhere, the same one each time."""
    import os
    import stat
    import threading

    from flwr.common import ConfigRecord, RecordDict

    from fedrisk.parties.party_node import UNIX_SOCKET_PATH_MAX, party_socket_path
    from fedrisk.parties.relay import PartyRelayServer, relay_call

    assert party_socket_path(tmp_path) == tmp_path / "party.sock"
    deep = tmp_path.joinpath(*["state-folder-of-a-party"] * 6)
    path = party_socket_path(deep)
    assert len(os.fsencode(path)) <= UNIX_SOCKET_PATH_MAX < len(os.fsencode(deep / "party.sock"))
    assert path == party_socket_path(deep) != party_socket_path(deep / "other")
    folder = os.lstat(path.parent)
    assert stat.S_ISDIR(folder.st_mode) and folder.st_uid == os.getuid() and stat.S_IMODE(folder.st_mode) == 0o700

    server = PartyRelayServer(path, lambda kind, meta, content: RecordDict({"echo": ConfigRecord({"kind": kind})}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        reply = relay_call(path, "query.kind", {}, RecordDict({}))
        assert reply.config_records["echo"]["kind"] == "query.kind"
    finally:
        server.shutdown()
        server.server_close()
        path.unlink(missing_ok=True)


def test_a_socket_folder_that_is_not_this_users_own_or_too_deep_is_refused(tmp_path, monkeypatch):
    import os
    import shutil
    import tempfile

    from fedrisk.errors import ConfigError
    from fedrisk.parties.party_node import party_socket_path

    deep_state = tmp_path.joinpath(*["state-folder-of-a-party"] * 6)
    short = Path(tempfile.mkdtemp(prefix="fr-"))  # short enough for a socket path (a parallel runner's tmp_path may not be)
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path.joinpath(*["a-long-temporary-folder"] * 4)))
        with pytest.raises(ConfigError, match="set TMPDIR to a shorter folder"):
            party_socket_path(deep_state)
        monkeypatch.setattr(tempfile, "tempdir", str(short))
        (short / "elsewhere").mkdir()
        (short / f"fedrisk-{os.getuid()}").symlink_to(short / "elsewhere")
        with pytest.raises(ConfigError, match="is not a folder of this user's own"):
            party_socket_path(deep_state)
    finally:
        shutil.rmtree(short)


@pytest.mark.e2e  # starts two SuperLink processes; about 5 s
def test_a_fleet_port_taken_before_the_superlink_binds_it_is_replaced_at_first_start(tmp_path, monkeypatch):
    """Another program takes the port found free (a parallel test run, a busy host): the first start moves to other ports."""
    import fedrisk.federation.local as local

    federation = LocalFederation(tmp_path / "run", [], {}, tls=False, node_auth=False)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(local, "free_port", lambda: next(ports, None) or free_port())
        try:
            federation.start()
            assert federation.fleet_port != taken and federation.superlink is not None and federation.superlink.exited() is None
        finally:
            federation.stop()
    log = (federation.logs_dir / "superlink.log").read_text()
    assert log.count("Starting Flower SuperLink") == 2 and f"{taken} is already in use" in log
