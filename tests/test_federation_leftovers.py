"""A SuperLink that cannot start is given up after a few attempts, and ``fedrisk bench`` lists benchmarks only."""

from __future__ import annotations

import socket

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
