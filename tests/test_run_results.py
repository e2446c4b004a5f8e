"""A run's result reaches a remote submitter as data, through Flower's ``PullArtifacts`` and fedrisk's SuperLink.

The whole path (coordinator publishes, ``fedrisk train --superlink`` pulls) runs
in ``tests/test_remote_e2e.py``; here are the parts that must refuse: a wrong
token, a made-up run, a stock SuperLink without a result provider.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import httpx
import pytest

from fedrisk.errors import FedriskError
from fedrisk.federation.local import LocalFederation
from fedrisk.federation.run_results import RESULTS_DIR_ENV, ResultArtifacts, publish_result, pull_result, require_result_provider


def test_published_results_are_private_files_and_only_the_right_token_reads_them(tmp_path, monkeypatch):
    monkeypatch.delenv(RESULTS_DIR_ENV, raising=False)
    assert publish_result(7, {"status": "ok"}) is None  # no SuperLink asked for it: nothing written
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    path = publish_result(7, {"status": "ok", "auc": 0.8})
    assert path == tmp_path / "7.json" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["7.json"]  # no temporary file left behind

    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path / "gone"))  # a SuperLink folder removed under a running coordinator
    assert publish_result(9, {"status": "ok"}) is None  # one warning line; the run's own result.json is unaffected
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))

    artifacts = ResultArtifacts(tmp_path, "https://superlink.example:9093")
    url = artifacts.get_url(7)
    assert url is not None and url.startswith("https://superlink.example:9093/v1/fedrisk/results/7/")
    path_part = url.split("9093", 1)[1]
    assert artifacts.read(path_part) == path.read_bytes()
    assert artifacts.get_url(8) is None  # no result published for run 8: Flower answers "no URL"
    token = path_part.rsplit("/", 1)[1]
    assert artifacts.read(f"/v1/fedrisk/results/8/{token}") is None  # run 7's token does not open run 8
    flipped = ("0" if token[0] != "0" else "1") + token[1:]
    assert artifacts.read(f"/v1/fedrisk/results/7/{flipped}") is None
    assert artifacts.read("/v1/fedrisk/results/7/../../etc/passwd") is None
    other = ResultArtifacts(tmp_path, "https://superlink.example:9093")  # another SuperLink process: another key
    assert other.read(path_part) is None


def test_a_fedrisk_superlink_refuses_guessed_result_urls_and_unknown_runs(tmp_path):
    with LocalFederation(tmp_path / "operator", [], {}) as operator:  # just the SuperLink (TLS)
        (tmp_path / "operator" / "flwr" / "results" / "1.json").write_text('{"status": "ok"}')
        got = httpx.get(f"https://127.0.0.1:{operator.control_port}/v1/fedrisk/results/1/{'0' * 64}", verify=str(operator.ca_cert))
        assert got.status_code == 404 and b"status" not in got.content
        with pytest.raises(FedriskError, match=r"could not pull the result of Flower run 424242 from .*: no such run") as err:
            pull_result(f"127.0.0.1:{operator.control_port}", operator.ca_cert, 424242)
        assert "\n" not in str(err.value)
        require_result_provider(f"127.0.0.1:{operator.control_port}", operator.ca_cert)  # fedrisk's SuperLink: accepted


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_stock_flower_superlink_is_named_as_serving_no_results(tmp_path):
    port, fleet = _free_port(), _free_port()
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--fleet-api-address",
            f"127.0.0.1:{fleet}",
            "--database",
            ":flwr-in-memory:",
            "--disable-runtime-dependency-installation",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")},  # its flower-superexec
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "flower-superlink did not start"
                time.sleep(0.2)
        with pytest.raises(
            FedriskError, match=r"serves no run results \(a stock flower-superlink\?\): start it with `python -m fedrisk.federation.superlink`$"
        ):
            require_result_provider(f"127.0.0.1:{port}", None, insecure=True)  # what `fedrisk train --superlink` asks first
        with pytest.raises(FedriskError, match=r"serves no run results"):
            pull_result(f"127.0.0.1:{port}", None, 1, insecure=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
