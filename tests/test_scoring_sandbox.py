"""The scoring sandbox denies writes outside its private dir and any connection but the configured doors.

Each mechanism that works on this machine is tested (the test id names it:
``bwrap`` = bubblewrap, ``namespaces`` = the fallback trampoline); one that is
not available is skipped with the reason, so the report says which ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fedrisk.errors import ConfigError
from fedrisk.scoring.config import Limits
from fedrisk.scoring.launcher import SandboxSession
from fedrisk.scoring.sandbox import (
    bwrap_usable,
    choose_mechanism,
    namespaces_usable,
)

PROBE = textwrap.dedent(
    """
    import json, os, socket, sys
    args = json.loads(sys.argv[1])
    out = {"uid": os.getuid(), "hostname": socket.gethostname()}

    def attempt(name, fn):
        try:
            fn()
            out[name] = "ok"
        except OSError as exc:
            out[name] = f"denied: {exc.strerror or exc}"

    def write(path):
        with open(path, "w") as handle:
            handle.write("x")

    attempt("write_private", lambda: write(os.path.join(args["private"], "scratch.txt")))
    attempt("write_readonly_bind", lambda: write(os.path.join(args["readonly"], "new.txt")))
    attempt("write_outside", lambda: write(args["outside"]))
    attempt("write_root", lambda: write("/fedrisk-probe.txt"))
    attempt("write_usr", lambda: write("/usr/fedrisk-probe.txt"))
    attempt("write_dev_shm", lambda: write("/dev/shm/fedrisk-probe.txt"))
    attempt("write_tmp", lambda: write("/tmp/fedrisk-probe.txt"))
    attempt("write_dev_null", lambda: write("/dev/null"))

    def dial(port):
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(b"escaped")
        s.close()

    def door():
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(args["door"])
        s.sendall(b"through the door")
        s.close()

    attempt("connect_unlisted", lambda: dial(args["unlisted"]))
    attempt("connect_listed_by_address", lambda: dial(args["listed"]))
    attempt("connect_door", door)
    attempt("read_readonly_bind", lambda: open(os.path.join(args["readonly"], "data.txt")).read())
    print(json.dumps(out))
    """
)


class _Listener:
    """A TCP server on 127.0.0.1 that records what it receives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while True:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(2)
            data = b""
            try:
                while chunk := conn.recv(1024):
                    data += chunk
            except OSError:
                pass
            conn.close()
            self.received.append(data)

    def close(self) -> None:
        self.sock.close()


def _available(mechanism: str) -> bool:
    return bwrap_usable() if mechanism == "bwrap" else namespaces_usable()


@pytest.mark.parametrize("mechanism", ["bwrap", "namespaces"])
def test_sandbox_denies_writes_outside_its_dir_and_unlisted_connections(mechanism, tmp_path):
    if not _available(mechanism):
        pytest.skip(f"sandbox mechanism {mechanism!r} is not available on this machine")
    readonly = tmp_path / "bundle"
    readonly.mkdir()
    (readonly / "data.txt").write_text("model")
    outside = tmp_path / "outside.txt"
    unlisted, listed = _Listener(), _Listener()

    async def run() -> dict:
        session = SandboxSession(mechanism, read_only=[str(readonly)], doors={"party": ("127.0.0.1", listed.port)})
        private = await session.open()
        args = {"private": str(private), "readonly": str(readonly), "outside": str(outside), "door": str(session.door("party")),
                "unlisted": unlisted.port, "listed": listed.port}  # fmt: skip
        proc = await session.spawn([sys.executable, "-c", PROBE, json.dumps(args)], stdin=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        await asyncio.sleep(0.3)  # let the door's forwarder deliver
        await session.close()
        assert not private.exists(), "the private dir is removed afterwards"
        return json.loads(out.decode().strip().splitlines()[-1])

    try:
        result = asyncio.run(run())
    finally:
        unlisted.close()
        listed.close()
    print(f"sandbox mechanism that ran: {mechanism}: {result}")
    assert result["write_private"] == "ok"
    assert result["read_readonly_bind"] == "ok"
    assert result["write_dev_null"] == "ok"
    for key in ("write_readonly_bind", "write_outside", "write_root", "write_usr", "write_dev_shm", "write_tmp"):
        assert result[key].startswith("denied"), (key, result[key])
    assert not outside.exists()
    assert result["connect_unlisted"].startswith("denied")
    assert result["connect_listed_by_address"].startswith("denied")  # even the party's own address: only the door
    assert result["connect_door"] == "ok"
    assert unlisted.received == []
    assert b"through the door" in listed.received
    assert result["uid"] == 1000 and result["hostname"] == "fedrisk-sandbox"


def test_auto_picks_the_strongest_available_mechanism():
    if not (bwrap_usable() or namespaces_usable()):
        with pytest.raises(ConfigError, match="no sandbox is available here"):
            choose_mechanism("auto")
        return
    chosen = choose_mechanism("auto")
    expected = "bwrap" if bwrap_usable() else "namespaces"
    print(f"sandbox mechanism chosen by auto: {chosen}")
    assert chosen == expected


def test_auto_refuses_to_serve_without_a_sandbox(monkeypatch):
    """Fail closed: with neither bubblewrap nor namespaces, `auto` is an error; only an explicit choice serves unisolated."""
    from fedrisk.scoring import sandbox

    monkeypatch.setattr(sandbox, "bwrap_usable", lambda: False)
    monkeypatch.setattr(sandbox, "namespaces_usable", lambda: False)
    with pytest.raises(ConfigError) as refused:
        sandbox.choose_mechanism("auto")
    assert str(refused.value) == (
        "no sandbox is available here: bubblewrap is not installed (apt-get install bubblewrap) and unprivileged user namespaces "
        "are not usable; refusing to serve without isolation (pass --sandbox none to do so anyway)"
    )
    assert sandbox.choose_mechanism("none") == "none" and sandbox.choose_mechanism("rlimits") == "rlimits"
    for mechanism in ("bwrap", "namespaces"):
        with pytest.raises(ConfigError, match=f"sandbox '{mechanism}' requested but"):
            sandbox.choose_mechanism(mechanism)


KEY_PROBE = textwrap.dedent(
    """
    import json, os, sys
    out = {}
    for label, path in json.loads(sys.argv[1]).items():
        try:
            with open(path, "rb") as handle:
                handle.read(1)
            out[label] = "read"
        except OSError as exc:
            out[label] = f"denied: {exc.strerror}"
        try:
            out[label + "/dir"] = sorted(os.listdir(os.path.dirname(path)))
        except OSError as exc:
            out[label + "/dir"] = f"denied: {exc.strerror}"
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("mechanism", ["bwrap", "namespaces"])
def test_a_sandboxed_scorer_cannot_open_the_partys_key_files(mechanism, example, tmp_path):
    """A party host: the federation key folder (CA key, its client key, its node key), its state folder (ledger key).
    The party scoring service's sandbox sees its own TLS certificate and key, nothing else of those folders."""
    if not _available(mechanism):
        pytest.skip(f"sandbox mechanism {mechanism!r} is not available on this machine")
    from fedrisk.crypto.keyfiles import write_secret_file
    from fedrisk.crypto.pki import create_server_cert, load_federation_pki
    from fedrisk.crypto.pki_admin import init_federation_keys
    from fedrisk.scoring.config import PartyServiceConfig
    from fedrisk.scoring.launcher import read_only_paths

    keys = init_federation_keys(tmp_path / "fed", ["bank", "tax_bureau"])
    cert, key = create_server_cert(load_federation_pki(keys.folder), "tax_bureau-scoring", ["127.0.0.1"])
    ledger_key = write_secret_file(tmp_path / "state" / "tax_bureau" / "identity.key", b"ed25519 secret")
    config = PartyServiceConfig(bundle=str(example.bundles["tax_bureau"]), trusted_keys=[], table=str(example.tables["tax_bureau"]),
                                tls_cert=str(cert), tls_key=str(key), client_ca=str(keys.ca_cert), allow_list=str(example.allow_lists["tax_bureau"]),
                                crl=str(keys.folder / "crl.pem"))  # fmt: skip
    targets = {
        "ca_key": str(keys.folder / "ca.key"),
        "client_key": str(keys.folder / "parties" / "tax_bureau.key"),
        "node_key": str(keys.folder / "nodes" / "tax_bureau"),
        "other_server_key": str(keys.folder / "servers" / "scoring-node.key"),
        "ledger_key": str(ledger_key),
        "own_tls_key": str(key),
    }
    create_server_cert(load_federation_pki(keys.folder), "scoring-node", ["127.0.0.1"])
    for path in targets.values():
        assert Path(path).is_file()

    async def run() -> dict:
        session = SandboxSession(mechanism, read_only=read_only_paths(config))
        await session.open()
        try:
            proc = await session.spawn([sys.executable, "-c", KEY_PROBE, json.dumps(targets)], stdin=asyncio.subprocess.DEVNULL)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            await session.close()
        return json.loads(out.decode().strip().splitlines()[-1])

    result = asyncio.run(run())
    print(f"{mechanism}: {result}")
    for label in ("ca_key", "client_key", "node_key", "other_server_key", "ledger_key"):
        assert result[label] == "denied: No such file or directory", (label, result[label])
    assert result["node_key/dir"] == "denied: No such file or directory"  # the node-key folder is not there at all
    assert result["ledger_key/dir"] == "denied: No such file or directory"  # nor the party's state folder
    assert result["own_tls_key"] == "read"  # its own TLS key is configured, so it is there
    assert result["own_tls_key/dir"] == ["tax_bureau-scoring.crt", "tax_bureau-scoring.key"]  # and only what is configured
    assert result["ca_key/dir"] == ["ca.crt", "servers"]  # the key folder: the CA certificate and the way to its own TLS files


def test_auto_with_no_mechanism_refuses_to_start_from_the_cli(example, tmp_path):
    """The real CLI on a host without bubblewrap and without user namespaces (made so with bubblewrap's --disable-userns)."""
    if not bwrap_usable():
        pytest.skip("needs bubblewrap to run the CLI where user namespaces cannot be created")
    cert, key = example.server_cert("tax_bureau-scoring")
    bindir = tmp_path / "bin"  # a PATH without bwrap
    bindir.mkdir()
    argv = ["bwrap", "--dev-bind", "/", "/", "--unshare-user", "--disable-userns", "--setenv", "PATH", str(bindir), "--",
            sys.executable, "-m", "fedrisk.cli", "score", "party-serve", "--bundle", str(example.bundles["tax_bureau"]),
            "--trusted-keys", str(example.trusted_keys), "--table", str(example.tables["tax_bureau"]), "--tls-cert", str(cert), "--tls-key", str(key),
            "--client-ca", str(example.pki.ca_cert), "--allow-list", str(example.allow_lists["tax_bureau"])]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: no sandbox is available here: bubblewrap is not installed (apt-get install bubblewrap) and unprivileged user namespaces "
        "are not usable; refusing to serve without isolation (pass --sandbox none to do so anyway)"
    ]


def test_resource_limits_cap_memory_and_are_irreversible():
    code = textwrap.dedent(
        """
        import resource, sys
        from fedrisk.scoring.config import Limits
        from fedrisk.scoring.limits import apply_limits
        apply_limits(Limits(memory_mb=400, max_open_files=64, file_size_mb=1))
        try:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            raised = True
        except (ValueError, OSError):
            raised = False
        try:
            block = bytearray(800 * 1024 * 1024)
            allocated = True
        except MemoryError:
            allocated = False
        print(raised, allocated, resource.getrlimit(resource.RLIMIT_NOFILE)[1], resource.getrlimit(resource.RLIMIT_CORE)[1])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    raised, allocated, nofile, core = out.stdout.split()
    # root keeps CAP_SYS_RESOURCE outside a sandbox and may raise them back; inside, nobody can
    if raised == "True":
        import os

        assert os.geteuid() == 0
    assert allocated == "False" and nofile == "64" and core == "0"


def test_limits_default_is_a_bounded_process():
    limits = Limits()
    assert limits.memory_mb > 0 and limits.max_open_files > 0 and limits.file_size_mb > 0


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    from fedrisk.scoring.example import load_or_build_example

    return load_or_build_example(tmp_path_factory.getbasetemp() / "scoring-example")


@pytest.mark.e2e
@pytest.mark.parametrize("mechanism", ["bwrap", "namespaces", "rlimits"])
def test_a_party_scoring_service_serves_from_each_mechanism(mechanism, example):
    if mechanism != "rlimits" and not _available(mechanism):
        pytest.skip(f"sandbox mechanism {mechanism!r} is not available on this machine")
    from fedrisk.scoring.config import PartyServiceConfig
    from fedrisk.scoring.launcher import Launcher
    from fedrisk.scoring.transport import secure_channel
    from fedrisk.v1 import scoring_pb2 as pb
    from fedrisk.v1 import scoring_pb2_grpc as rpc

    cert, key = example.server_cert("tax_bureau-scoring")
    config = PartyServiceConfig(bundle=str(example.bundles["tax_bureau"]), trusted_keys=list(json.loads(example.trusted_keys.read_text()).values()),
                                table=str(example.tables["tax_bureau"]), tls_cert=str(cert), tls_key=str(key), client_ca=str(example.pki.ca_cert),
                                allow_list=str(example.allow_lists["tax_bureau"]))  # fmt: skip
    some_id = Path(example.allow_lists["tax_bureau"]).read_text().split()[0]

    async def run() -> tuple[dict, pb.PartyScoreResponse]:
        launcher = Launcher(config, sandbox=mechanism)
        ready = await launcher.start()
        try:
            bcert, bkey = example.client_cert("bank")
            channel = secure_channel(ready["address"], ca=example.pki.ca_cert, cert=bcert, key=bkey)
            response = await rpc.PartyScoringServiceStub(channel).PartialScores(
                pb.PartyScoreRequest(model_version=example.run_id, sme_ids=[some_id]), timeout=10
            )
            await channel.close()  # type: ignore[union-attr]
        finally:
            await launcher.stop()
        return ready, response

    ready, response = asyncio.run(run())
    print(f"party scoring service ran under: {ready['sandbox']}")
    assert ready["sandbox"] == mechanism
    assert response.answers[0].state == pb.COVERED
    assert (ready["unix"] is not None) == (mechanism in ("bwrap", "namespaces"))


@pytest.mark.e2e
def test_a_tampered_bundle_is_refused_before_any_sandbox_starts(example, tmp_path):
    import shutil

    bad = tmp_path / "bank"
    shutil.copytree(example.bundles["bank"], bad)
    meta = bad / "model.json"
    meta.write_text(meta.read_text().replace('"bank"', '"bonk"', 1))  # same size, other bytes
    cert, key = example.server_cert("scoring-node")
    ccert, ckey = example.client_cert("bank")
    done = subprocess.run(
        [sys.executable, "-m", "fedrisk.cli", "score", "serve", "--bundle", str(bad), "--trusted-keys", str(example.trusted_keys),
         "--tls-cert", str(cert), "--tls-key", str(key), "--ca", str(example.pki.ca_cert), "--client-cert", str(ccert), "--client-key", str(ckey),
         "--party", "tax_bureau=127.0.0.1:9", "--party", "platform=127.0.0.1:9", "--no-register"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["error: bundle file model.json: sha256 differs from the manifest"]


def test_private_dirs_of_dead_launchers_are_swept(tmp_path, monkeypatch):
    from fedrisk.scoring import sandbox

    monkeypatch.setattr(sandbox.os, "access", lambda path, mode: False)  # use the temp dir, not /dev/shm
    monkeypatch.setattr(sandbox.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(sandbox.tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "fedrisk-sandbox-stale"
    stale.mkdir()
    (stale / ".launcher-pid").write_text(str(dead.pid))
    alive = tmp_path / "fedrisk-sandbox-alive"
    alive.mkdir()
    (alive / ".launcher-pid").write_text(str(os.getpid()))
    fresh = sandbox.make_private_dir()
    assert not stale.exists() and alive.exists() and fresh.parent == tmp_path
    assert (fresh / ".launcher-pid").read_text() == str(os.getpid())
