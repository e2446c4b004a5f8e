"""A run's result returned to whoever submitted it, as data: Flower's artifact pull, served by fedrisk's SuperLink.

The coordinator (the ServerApp) runs beside the SuperLink, so a run submitted
from another host (``fedrisk train --superlink``, :mod:`fedrisk.federation.remote`)
cannot read its ``coordinator/result.json``. Flower 1.39's channel for a
finished run's outputs is the Control API's ``PullArtifacts`` (``flwr pull
RUN_ID``): Flower checks that the run is finished and is the caller's, then asks
the SuperLink's ``ArtifactProvider`` for a download URL. A stock SuperLink has
no provider; fedrisk's SuperLink entry point (:mod:`fedrisk.federation.superlink`)
installs :class:`ResultArtifacts`:

1. The coordinator writes its result (sizes and metrics, never data) with
   :func:`publish_result` into the folder the SuperLink named in
   :data:`RESULTS_DIR_ENV` (its SuperExec, and the ServerApp that starts, inherit
   it), as ``<flower run id>.json``, mode 0600, atomically.
2. ``PullArtifacts`` for that run returns
   ``https://HOST:PORT/v1/fedrisk/results/<run id>/<token>``, ``token`` =
   HMAC-SHA256 of the run id under a key drawn when the SuperLink process
   started: a capability URL, as a presigned object-store URL is, handed out
   only after Flower's own ownership check; a guessed or altered token is a 404.
3. A ``GET`` on it, on the same TLS port as the Control API, returns the JSON
   (:class:`ResultRoutes`); :func:`pull_result` does both steps and keeps only
   the URL's path, so it never follows a URL to another host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flwr.superlink.artifact_provider import ArtifactProvider

from fedrisk.errors import ConfigError, FedriskError

#: Environment variable naming the folder the coordinator publishes results into (set by the SuperLink entry point).
RESULTS_DIR_ENV = "FEDRISK_RESULTS_DIR"
RESULTS_PATH = "/v1/fedrisk/results/"
#: A result is sizes and metrics; anything larger is refused by the puller.
MAX_RESULT_BYTES = 16 * 1024 * 1024
_ROUTE = re.compile(r"^/v1/fedrisk/results/(\d{1,20})/([0-9a-f]{64})$")


def publish_result(run_id: int, result: dict) -> Path | None:
    """Write the coordinator's result where the SuperLink serves it; ``None`` when no SuperLink asked for it
    (or its folder is gone: one warning line, and the submitter then sees "no result").

    Parameters
    ----------
    run_id : int
        Flower's run id (``Context.run_id``), the key ``PullArtifacts`` is asked with.
    result : dict
        The result as written to ``coordinator/result.json``.
    """
    folder = os.environ.get(RESULTS_DIR_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{int(run_id)}.json"
    data = json.dumps(result, sort_keys=True, default=str).encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".result-")  # created 0600
    except OSError as err:  # the SuperLink's folder is gone: the run's own result.json still holds it
        print(f"[fedrisk] warning: could not publish the result to {folder}: {err.strerror}", flush=True)
        return None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class RunNotFinished(FedriskError):
    """``PullArtifacts`` was asked about a run Flower has not marked finished."""


@dataclass
class ResultArtifacts(ArtifactProvider):
    """Flower ``ArtifactProvider`` handing out capability URLs for published results.

    Parameters
    ----------
    folder : Path
        Where :func:`publish_result` writes (0700).
    base_url : str
        ``https://HOST:PORT`` the SuperLink's HTTP API is reached at.
    """

    folder: Path
    base_url: str
    _key: bytes = field(default_factory=lambda: os.urandom(32), repr=False)

    def token(self, run_id: int) -> str:
        return hmac.new(self._key, f"fedrisk-result:{int(run_id)}".encode(), hashlib.sha256).hexdigest()

    def get_url(self, run_id: int) -> str | None:
        if not (self.folder / f"{int(run_id)}.json").is_file():
            return None  # the coordinator wrote no result (it died): Flower answers "no URL"
        return f"{self.base_url}{RESULTS_PATH}{int(run_id)}/{self.token(run_id)}"

    @property
    def output_dir(self) -> str:
        return str(self.folder)

    @property
    def tmp_dir(self) -> str:
        return str(self.folder)

    def read(self, path: str) -> bytes | None:
        """The result a request path names, or ``None`` (unknown run, wrong token, no result)."""
        match = _ROUTE.match(path)
        if match is None:
            return None
        run_id, token = int(match.group(1)), match.group(2)
        if not hmac.compare_digest(token, self.token(run_id)):
            return None
        try:
            return (self.folder / f"{run_id}.json").read_bytes()
        except OSError:
            return None


class ResultRoutes:
    """ASGI wrapper serving ``GET /v1/fedrisk/results/…`` from :class:`ResultArtifacts`; all else goes to Flower's app."""

    def __init__(self, app: Any, artifacts: ResultArtifacts) -> None:
        self.app = app
        self.artifacts = artifacts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # ``state`` and the like: Flower's app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or not str(scope.get("path", "")).startswith(RESULTS_PATH):
            await self.app(scope, receive, send)
            return
        from starlette.responses import Response

        data = self.artifacts.read(scope["path"]) if scope.get("method") == "GET" else None
        if data is None:
            response = Response(content=b"no such result\n", status_code=404, media_type="text/plain")
        else:
            response = Response(content=data, media_type="application/json", headers={"Cache-Control": "no-store"})
        await response(scope, receive, send)


def base_url(host: str, port: int | str, *, insecure: bool) -> str:
    """``https://HOST:PORT`` of a SuperLink's HTTP API (a wildcard bind address becomes this host's name)."""
    import socket

    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'http' if insecure else 'https'}://{host}:{port}"


class NoSuchRun(FedriskError):
    """``PullArtifacts`` was asked about a run the SuperLink does not know."""


def _artifact_url(control_address: str, cafile: str | None, run_id: int, *, insecure: bool) -> str:
    """Flower's ``PullArtifacts`` for ``run_id``: the URL, or ``""`` when the provider has none."""
    import httpx
    from flwr.proto.control_pb2 import PullArtifactsRequest
    from flwr.supercore.control.control_http_client import ControlHttpClient

    client = ControlHttpClient.from_server_address(control_address, insecure, cafile, interceptors=[])
    try:
        return str(client.PullArtifacts(PullArtifactsRequest(run_id=int(run_id))).url)
    except httpx.HTTPStatusError as err:  # Flower maps its error codes to HTTP statuses (flwr.supercore.error.catalog)
        code = err.response.status_code
        if code == 501:  # NO_ARTIFACT_PROVIDER
            raise FedriskError(
                f"the SuperLink at {control_address} serves no run results (a stock flower-superlink?): start it with `python -m fedrisk.federation.superlink`"
            ) from None
        if code == 412:  # PULL_UNFINISHED_RUN
            raise RunNotFinished(f"Flower run {run_id} is not finished") from None
        if code == 404:  # RUN_ID_NOT_FOUND
            raise NoSuchRun(f"could not pull the result of Flower run {run_id} from {control_address}: no such run") from None
        raise FedriskError(f"could not pull the result of Flower run {run_id} from {control_address}: HTTP {code}") from None
    except Exception as err:  # noqa: BLE001 - transport errors of Flower's client, one line each
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FedriskError(f"could not pull the result of Flower run {run_id} from {control_address}: {text}") from None
    finally:
        client.close()


def _cafile(root_certificates: Path | None, insecure: bool) -> str | None:
    if insecure:
        return None
    if root_certificates is None:
        raise ConfigError("the SuperLink's CA certificate is needed (TLS is on by default)")
    return str(root_certificates)


def require_result_provider(control_address: str, root_certificates: Path | None, *, insecure: bool = False) -> None:
    """Refuse, before a run is submitted, a SuperLink that could not hand its result back.

    Flower checks for an artifact provider before it looks the run up, so asking
    about run 0 (never a Flower run id) answers "no provider" or "no such run".
    """
    try:
        _artifact_url(control_address, _cafile(root_certificates, insecure), 0, insecure=insecure)
    except NoSuchRun:
        return


def pull_result(control_address: str, root_certificates: Path | None, run_id: int, *, insecure: bool = False) -> dict | None:
    """A finished run's result from a fedrisk SuperLink; ``None`` when the coordinator published none.

    Raises
    ------
    FedriskError
        The SuperLink serves no results (a stock ``flower-superlink``), the run is not
        finished (:class:`RunNotFinished`) or unknown (:class:`NoSuchRun`), or the answer
        is not a result (one line each).
    """
    import httpx

    cafile = _cafile(root_certificates, insecure)
    url = _artifact_url(control_address, cafile, run_id, insecure=insecure)
    if not url:
        return None
    path = urlsplit(url).path
    if _ROUTE.match(path) is None:
        raise FedriskError(f"the SuperLink at {control_address} answered with a URL that is not a fedrisk result: {url[:80]!r}")
    url = f"{'http' if insecure else 'https'}://{control_address}{path}"  # only the path: never another host
    try:
        with httpx.stream("GET", url, verify=False if insecure else (cafile or True), timeout=60.0) as got:
            if got.status_code != 200:
                raise FedriskError(f"the result of Flower run {run_id} could not be fetched: HTTP {got.status_code}")
            body = bytearray()
            for chunk in got.iter_bytes():
                body += chunk
                if len(body) > MAX_RESULT_BYTES:
                    raise FedriskError(f"the result of Flower run {run_id} is larger than {MAX_RESULT_BYTES} bytes")
    except httpx.HTTPError as err:
        raise FedriskError(f"the result of Flower run {run_id} could not be fetched: {err}") from None
    try:
        result = json.loads(bytes(body))
    except ValueError:
        raise FedriskError(f"the result of Flower run {run_id} is not JSON") from None
    if not isinstance(result, dict):
        raise FedriskError(f"the result of Flower run {run_id} is not a JSON object")
    return result
