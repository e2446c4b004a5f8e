"""``fedrisk score``: every command has --help; user errors are one line and exit 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedrisk.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["serve", "party-serve", "batch", "watch"])
def test_every_score_command_has_help(command):
    result = runner.invoke(app, ["score", command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and "--" in result.output


def test_score_group_lists_its_commands():
    result = runner.invoke(app, ["score", "--help"])
    assert result.exit_code == 0
    for command in ("serve", "party-serve", "batch", "watch"):
        assert command in result.output


def test_serve_needs_a_register_or_says_it_records_nothing(tmp_path):
    for name in ("b", "c.crt", "c.key", "ca.crt"):
        (tmp_path / name).write_text("x")
    result = runner.invoke(app, ["score", "serve", "--bundle", str(tmp_path / "b"), "--trusted-keys", "00" * 32, "--tls-cert", str(tmp_path / "c.crt"),
                                 "--tls-key", str(tmp_path / "c.key"), "--ca", str(tmp_path / "ca.crt")])  # fmt: skip
    assert result.exit_code == 2
    assert "give --state-dir for the application register, or --no-register" in result.output


def test_party_serve_needs_an_allow_list(tmp_path):
    result = runner.invoke(app, ["score", "party-serve", "--bundle", str(tmp_path), "--trusted-keys", "00" * 32, "--table", str(tmp_path / "t.csv"),
                                 "--tls-cert", "c", "--tls-key", "k", "--client-ca", "ca"])  # fmt: skip
    assert result.exit_code == 2
    assert "give --allow-list" in result.output


def test_bad_party_endpoint_and_bad_trusted_key_are_one_line(tmp_path):
    args = ["score", "serve", "--bundle", str(tmp_path), "--tls-cert", "c", "--tls-key", "k", "--ca", "ca", "--no-register",
            "--client-cert", "c", "--client-key", "k"]  # fmt: skip
    result = runner.invoke(app, [*args, "--trusted-keys", "00" * 32, "--party", "tax_bureau=nowhere"])
    assert result.exit_code == 2 and result.output == "error: endpoint 'nowhere' is not HOST:PORT\n"
    result = runner.invoke(app, [*args, "--trusted-keys", "abc", "--party", "tax_bureau=127.0.0.1:1"])
    assert result.exit_code == 2 and "cannot read trusted keys abc" in result.output
