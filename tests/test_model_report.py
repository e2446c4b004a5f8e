"""The model report: metrics checked against scikit-learn / scipy on default-credit, HTML rendered in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from fedrisk.errors import DataValidationError
from fedrisk.models.report import bank_iv, build_model_report, gain_table, leave_out_contributions, model_metrics
from fedrisk.models.woe import PlainWOE

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
def fitted(default_credit_dir):
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").set_index("id").iloc[:6000]
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").set_index("id").loc[guest.index]
    host = host.add_prefix("h_")
    train, test = train_test_split(guest.index.to_numpy(), test_size=0.3, stratify=guest["y"], random_state=42)
    y = guest["y"].to_numpy()
    Xb, Xh = guest.drop(columns="y"), host
    joint = pd.concat([Xb, Xh], axis=1)
    full = LogisticRegression(max_iter=2000).fit(joint.loc[train], guest.loc[train, "y"])
    bank_only = LogisticRegression(max_iter=2000).fit(Xb.loc[train], guest.loc[train, "y"])
    return {
        "guest": guest,
        "host": host,
        "train": train,
        "test": test,
        "y_test": guest.loc[test, "y"].to_numpy(),
        "p_full": full.predict_proba(joint.loc[test])[:, 1],
        "p_bank": bank_only.predict_proba(Xb.loc[test])[:, 1],
        "y": y,
    }


@pytest.fixture(scope="module")
def report(fitted, tmp_path_factory):
    out = tmp_path_factory.mktemp("model_report")
    g = fitted["guest"]
    bank_feats = [c for c in g.columns if c != "y"]
    iv = bank_iv(g.loc[fitted["train"], bank_feats].to_numpy(), g.loc[fitted["train"], "y"].to_numpy(), bank_feats)
    contrib = leave_out_contributions(fitted["y_test"], fitted["p_full"], {"tax_bureau": fitted["p_bank"]}, method="retrained without the party")
    return build_model_report(
        out,
        y=fitted["y_test"],
        pd_=fitted["p_full"],
        model="vertical_lr",
        run_id="report-test",
        parties={"bank": {"role": "label_holder", "features": bank_feats}, "tax_bureau": {"role": "feature_holder", "features": list(fitted["host"].columns)}},
        bank="bank",
        iv=iv,
        contributions=contrib,
        base_learners={"bank_only": fitted["p_bank"]},
    )


def test_metrics_match_references(fitted):
    y, p = fitted["y_test"], fitted["p_full"]
    m = model_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["ks"] == pytest.approx(ks_2samp(p[y == 1], p[y == 0]).statistic, abs=1e-12)
    assert m["auc"] > 0.6  # a real model on real data, not noise
    # gain table: groups partition the rows, gain ends at 100 %, the riskiest decile has the highest lift
    gain = m["gain"]
    assert sum(g["rows"] for g in gain) == y.size and sum(g["defaults"] for g in gain) == y.sum()
    assert gain[-1]["cum_defaults_pct"] == pytest.approx(100.0)
    assert gain[0]["lift"] == max(g["lift"] for g in gain) and gain[0]["lift"] > 1.5
    # the top decile's default rate recomputed directly
    top = np.argsort(-p, kind="mergesort")[: gain[0]["rows"]]
    assert gain[0]["default_rate"] == pytest.approx(y[top].mean())
    # calibration: scikit-learn's quantile calibration curve on the same deciles
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    bins = m["calibration"]["bins"]
    if len(prob_true) == len(bins):  # same decile edges unless PDs tie at an edge
        np.testing.assert_allclose([b["observed_rate"] for b in bins], prob_true, atol=0.02)
        np.testing.assert_allclose([b["pd_mean"] for b in bins], prob_pred, atol=0.02)
    assert m["calibration"]["brier"] == pytest.approx(np.mean((p - y) ** 2))
    d = m["distribution"]
    assert sum(d["defaults"]) == y.sum() and sum(d["non_defaults"]) == (y == 0).sum()


def test_iv_is_the_banks_own_and_contribution_is_the_auc_drop(fitted, report):
    doc = json.loads(Path(report.json_path).read_text())
    g = fitted["guest"]
    feats = [c for c in g.columns if c != "y"]
    ref = PlainWOE(n_bins=10, min_bin_size=50).fit(g.loc[fitted["train"], feats].to_numpy(), g.loc[fitted["train"], "y"].to_numpy(), feature_names=feats)
    got = {f["name"]: f["iv"] for f in doc["iv"]["parties"]["bank"]["features"]}
    assert got == pytest.approx(ref.iv_, abs=1e-12)
    assert max(got.values()) > 0.01
    # another party's features: named, never valued
    host = doc["iv"]["parties"]["tax_bureau"]["features"]
    assert [f["name"] for f in host] == list(fitted["host"].columns)
    assert all(f["iv"] is None for f in host)
    c = doc["contributions"]["tax_bureau"]
    y = fitted["y_test"]
    assert c["auc_drop"] == pytest.approx(roc_auc_score(y, fitted["p_full"]) - roc_auc_score(y, fitted["p_bank"]), abs=1e-12)
    assert c["auc_drop"] > 0.02  # the host's PAY_0 etc. carry most of the signal


def test_bad_input_is_one_line(fitted, tmp_path):
    y, p = fitted["y_test"], fitted["p_full"]
    for bad_y, bad_p, words in ((y[:-1], p, "labels but"), (y, p * 2, "within [0, 1]"), (np.zeros_like(y), p, "one class")):
        with pytest.raises(DataValidationError, match=re.escape(words)) as err:
            model_metrics(bad_y, bad_p)
        assert "\n" not in str(err.value)
    with pytest.raises(DataValidationError, match="groups"):
        gain_table(y, p, groups=0)


def test_report_is_self_contained(report):
    text = Path(report.html_path).read_text()
    assert text.count("data:image/png;base64,") == 4
    assert "http://" not in text and "https://" not in text and "<script" not in text
    for word in ("Lift / gain table", "Calibration", "Information value", "tax_bureau", "withheld", "AUC drop", "bank_only"):
        assert word in text
    for src in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text):
        assert base64.b64decode(src)[:8] == b"\x89PNG\r\n\x1a\n"


def test_hostile_names_are_escaped(fitted, tmp_path):
    out = build_model_report(
        tmp_path,
        y=fitted["y_test"],
        pd_=fitted["p_full"],
        model="<b>m</b>",
        run_id="x",
        parties={"bank": {"role": "label_holder", "features": ["<script>alert(1)</script>"]}, "$_evil": {"role": "feature_holder", "features": ["a&b"]}},
        bank="bank",
        iv=None,
    )
    text = Path(out.html_path).read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "a&amp;b" in text
    assert "to be filled" in text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make system-deps installs it)")
def test_model_report_renders_in_headless_chromium(report, tmp_path):
    url = Path(report.html_path).resolve().as_uri()
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert "Lift / gain table" in dom.stdout and "tax_bureau" in dom.stdout and dom.stdout.count("<img") == 4
    shot = tmp_path / "model_report.png"
    run = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2400", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-500:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
