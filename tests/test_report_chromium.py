"""The audit report renders in headless Chromium (screenshot taken when Chromium is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from fedrisk.audit import build_report
from fedrisk.audit.run_files import collect_ledgers
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.federation.server_app import app as server_app
from fedrisk.parties.settings import PartySettings

SCHEMA = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(23)}, "id_format": "opaque"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory, default_credit_dir):
    tmp = tmp_path_factory.mktemp("report")
    parties = []
    for name, file in (("bank_a", "guest"), ("bank_b", "host_1")):
        path = tmp / f"{name}.csv"
        pd.read_csv(default_credit_dir / f"default_credit_homo_{file}.csv").head(400).to_csv(path, index=False)
        parties.append(PartySettings(name, "bank", str(path), SCHEMA, str(tmp / "parties" / name)))
    config = {"mode": "horizontal", "num-rounds": 2, "model": "logistic", "run-dir": str(tmp), "parties": "bank_a,bank_b", "fedrisk-run-id": "report"}
    server_app(InProcessGrid(parties, run_config=config), Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=config))
    ledgers, keys = collect_ledgers([tmp])
    return build_report(ledgers, tmp / "audit", trusted_keys=keys, run_id="report")


def test_report_is_verified_and_self_contained(report):
    assert report.ok
    html = Path(report.html_path).read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    for name in ("bank_a", "bank_b", "coordinator", "ciphertext"):
        assert name in html


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make system-deps installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = Path(report.html_path).resolve().as_uri()
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert "Verified" in dom.stdout and "bank_a" in dom.stdout
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1600", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-500:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
