"""Live points decisions: the scoring node and the parties' scoring services serving a WOE points scorecard.

A small synthetic federation is trained once (federated WOE binning and the
vertical LR on the WOE table, over the real encrypted protocols), converted to
points, and each party signs a bundle holding its own points table
(:func:`fedrisk.scoring.example.build_points_example`). The node and the
party services run in this process over real gRPC with TLS (mTLS to the parties).
The live score must be the offline :class:`~fedrisk.models.points.PointsScorecard`
score to 1e-9, the reasons must be in points and per party, and no bundle may
hold another party's table. ``fedrisk demo --model scorecard`` must print and
write the bank's points table and nothing of the other parties'.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrisk.errors import ConfigError, DataValidationError, ProtocolError
from fedrisk.models.bundle import write_model_bundle
from fedrisk.models.points import PartyPoints
from fedrisk.scoring.bundles import load_bank_model, load_party_model
from fedrisk.scoring.config import NodeConfig, PartyEndpoint, PartyServiceConfig
from fedrisk.scoring.example import (
    FEATURE_HOLDERS,
    NODE_CERT,
    ExampleFederation,
    load_or_build_example,
)
from fedrisk.scoring.scoring_node import ScoringNode
from fedrisk.scoring.party_service import PartyScoringService
from fedrisk.scoring.tables import load_feature_lookup
from fedrisk.scoring.transport import secure_channel
from fedrisk.data.synthetic import PARTY_SCHEMAS
from fedrisk.v1 import scoring_pb2 as pb
from fedrisk.v1 import scoring_pb2_grpc as rpc

PARTIES = ("bank", *FEATURE_HOLDERS)
NAMES = {p: list(PARTY_SCHEMAS[p].feature_names) for p in PARTIES}


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> ExampleFederation:
    return load_or_build_example(tmp_path_factory.getbasetemp() / "points-example", model="points")


def _keys(ex: ExampleFederation) -> list[str]:
    return [s.public_key_bytes.hex() for s in ex.signers.values()]


def _patient_policy(folder: Path, **changes: str) -> str:
    from fedrisk.scoring.policy import default_policy_path

    text = default_policy_path().read_text().replace("deadline_ms = 40", "deadline_ms = 2000")
    for old, new in changes.items():
        text, n = re.subn(rf"(?m)^{old} = .*$", f"{old} = {new}", text)
        assert n == 1, old
    path = folder / f"policy-{len(changes)}.toml"
    path.write_text(text)
    return str(path)


def _party_config(ex: ExampleFederation, party: str, **kw: object) -> PartyServiceConfig:
    cert, key = ex.server_cert(f"{party}-scoring")
    base = PartyServiceConfig(bundle=str(ex.bundles[party]), trusted_keys=_keys(ex), table=str(ex.tables[party]), tls_cert=str(cert),
                              tls_key=str(key), client_ca=str(ex.pki.ca_cert), allow_list=str(ex.allow_lists[party]))  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def _node_config(ex: ExampleFederation, parties: dict[str, PartyEndpoint], tmp: Path, **kw: object) -> NodeConfig:
    cert, key = ex.server_cert(NODE_CERT)
    ccert, ckey = ex.client_cert("bank")
    base = NodeConfig(bundle=str(ex.bundles["bank"]), trusted_keys=_keys(ex), tls_cert=str(cert), tls_key=str(key), ca=str(ex.pki.ca_cert),
                      client_cert=str(ccert), client_key=str(ckey), parties=parties, bank_table=str(ex.tables["bank"]),
                      policy=_patient_policy(tmp))  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def _decide(ex: ExampleFederation, tmp: Path, ids: list[str], *, down: tuple[str, ...] = ()) -> list[pb.Decision]:
    async def run() -> list[pb.Decision]:
        services, parties = [], {}
        for party in FEATURE_HOLDERS:
            if party in down:
                parties[party] = PartyEndpoint("127.0.0.1:9")  # nothing answers there
                continue
            svc = PartyScoringService(_party_config(ex, party))
            parties[party] = PartyEndpoint(await svc.start())
            services.append(svc)
        node = ScoringNode(_node_config(ex, parties, tmp))
        channel = secure_channel(await node.start(), ca=ex.pki.ca_cert)
        try:
            stub = rpc.ScoringServiceStub(channel)  # type: ignore[arg-type]
            return [await stub.Score(pb.Application(application_id=f"p-{i}", sme_id=s, estimate_only=True), timeout=20) for i, s in enumerate(ids)]
        finally:
            await channel.close()  # type: ignore[union-attr]
            await node.stop(0)
            for svc in services:
                await svc.stop(0)

    return asyncio.run(run())


# ------------------------------------------------------------------ offline, from each party's own bundle and table
def _own_parts(ex: ExampleFederation) -> dict[str, tuple[PartyPoints, object]]:
    """Each party's points table (from its verified bundle) and its own table, as that party reads them."""
    from fedrisk.models.bundle import load_model_bundle

    keys = [s.public_key_bytes for s in ex.signers.values()]
    out = {}
    for p in PARTIES:
        arrays, meta = load_model_bundle(ex.bundles[p], keys)
        part = PartyPoints.from_bundle(arrays, meta)
        out[p] = (part, load_feature_lookup(ex.tables[p], meta["schema"], part.feature_names, name=p))
    return out


def _pick_ids(ex: ExampleFederation, parts: dict) -> list[str]:
    """Bank SMEs: covered by both feature holders, by one only, by none."""
    lookups = {p: parts[p][1] for p in FEATURE_HOLDERS}
    groups: dict[tuple[bool, ...], list[str]] = {}
    for sme in ex.offline_score:
        groups.setdefault(tuple(sme in lookups[p] for p in FEATURE_HOLDERS), []).append(sme)
    assert len(groups) == 4, groups.keys()  # every coverage pattern occurs
    return [s for key in sorted(groups) for s in groups[key][:8]]


def _reason_map(d: pb.Decision) -> dict[str, list[pb.Reason]]:
    out: dict[str, list[pb.Reason]] = {}
    for r in d.reasons:
        out.setdefault(r.party, []).append(r)
    return out


def _points_of(reason: pb.Reason) -> float:
    m = re.match(r"^(?:score|\S+:) (\S+) points", reason.text)
    assert m, reason.text
    return float(m.group(1))


@pytest.fixture(scope="module")
def live(ex, tmp_path_factory):
    parts = _own_parts(ex)
    ids = _pick_ids(ex, parts)
    return parts, ids, _decide(ex, tmp_path_factory.mktemp("live"), ids)


def test_live_score_is_the_offline_points_scorecard_score(ex, live):
    parts, ids, decisions = live
    from fedrisk.scoring.policy import load_policy

    policy = load_policy(_patient_policy(Path(ex.folder)))
    scale = parts["bank"][0].scale
    assert [d.sme_id for d in decisions] == ids and len(ids) == 32
    for d in decisions:
        by_party = _reason_map(d)
        (total,) = [r for r in by_party["node"] if r.code == "SCORE_POINTS"]
        score = d.points  # the exact score travels as a field
        assert abs(_points_of(total) - score) <= 0.005  # and, rounded for people, as a reason
        offline = ex.offline_score[d.sme_id]  # PointsScorecard.score in the training process
        assert abs(score - offline) <= 1e-9, (d.sme_id, score, offline)
        # each party's points: its own table on its own row; 0 where it does not cover the SME
        party_points = {s.party: s.points for s in d.parties}
        party_points["bank"] = score - sum(party_points.values())
        for p in PARTIES:
            (r,) = [r for r in by_party[p] if r.code == "PARTY_POINTS"]
            assert abs(_points_of(r) - party_points[p]) <= 0.005
        covered = {p: d.sme_id in parts[p][1] for p in FEATURE_HOLDERS}
        for p in FEATURE_HOLDERS:
            part, table = parts[p]
            want = float(part.partial_points(np.array([table.row(d.sme_id)]))[0]) if covered[p] else 0.0
            assert abs(party_points[p] - want) <= 1e-9, (p, d.sme_id)
        part, table = parts["bank"]
        want_bank = float(part.partial_points(np.array([table.row(d.sme_id)]), {p: np.array([c]) for p, c in covered.items()})[0])
        assert abs(party_points["bank"] - want_bank) <= 1e-9
        # the PD and the integer score are the same points on the policy's scale
        z = (scale.offset - score) / scale.factor
        assert d.probability_of_default == pytest.approx(1.0 / (1.0 + math.exp(-z)), rel=1e-12, abs=1e-15)
        assert d.score == min(max(round(offline), policy.min_points), policy.max_points)
        assert {s.party: s.state == pb.COVERED for s in d.parties} == covered and not d.degraded
    scores = [d.points for d in decisions]
    assert len({round(s, 6) for s in scores}) > 20  # real, different scores


def test_reasons_are_in_points_per_party_and_name_only_each_partys_own_features(live):
    parts, _ids, decisions = live
    k = 3  # the shipped policy's max_reasons_per_party
    for d in decisions:
        by_party = _reason_map(d)
        assert set(by_party) <= {"policy", "node", *PARTIES}
        covered = {p: d.sme_id in parts[p][1] for p in FEATURE_HOLDERS}
        # the bank: its own features (and thin files) that cost it the most points, with bin and points
        part, table = parts["bank"]
        row = table.row(d.sme_id)
        items = [
            (r.points_below_best, r.feature, (f"bank data: {r.feature} in {r.bin} scores {r.points:.1f} points, {r.points_below_best:.1f} below its best bin"))
            for r in part.reasons(dict(zip(part.feature_names, row)), top=99)
        ]
        for ind in part.indicators:
            if not covered[ind.party] and ind.covered > ind.not_covered:
                items.append(
                    (
                        ind.covered - ind.not_covered,
                        f"thin_file:{ind.party}",
                        (f"{ind.party} holds no data on this SME (thin file): {ind.not_covered:.1f} points, {ind.covered - ind.not_covered:.1f} below covered"),
                    )
                )
        items.sort(key=lambda t: -t[0])
        got = [(r.code, r.text) for r in by_party["bank"] if r.code != "PARTY_POINTS"]
        assert got == [(code, text) for _, code, text in items[:k]], d.sme_id
        for p in FEATURE_HOLDERS:
            mine = [r for r in by_party[p] if r.code != "PARTY_POINTS"]
            if not covered[p]:
                assert mine == []
                continue
            part, table = parts[p]
            below = part.points_below_best(np.array([table.row(d.sme_id)]))[0]
            order = [part.feature_names[j] for j in np.argsort(-below, kind="stable") if below[j] > 1e-9][:k]
            assert [r.code for r in mine] == order  # ranked by points lost at the party
            for r in mine:  # names only: no value, bin or amount
                assert r.text == f"{p} data: {r.code} costs points against its best bin"
                assert not re.search(r"\d", r.text.replace(r.code, ""))
        # no party's reasons name another party's feature
        for p, reasons in by_party.items():
            if p in PARTIES:
                others = [n for q in PARTIES if q != p for n in NAMES[q]]
                assert not [n for r in reasons for n in others if n in r.code or n in r.text], (p, d.sme_id)


def test_a_party_that_is_down_adds_no_points_and_says_so(ex, live, tmp_path):
    parts, ids, _ = live
    both = [s for s in ids if all(s in parts[p][1] for p in FEATURE_HOLDERS)][:4]
    decisions = _decide(ex, tmp_path, both, down=("platform",))
    for d in decisions:
        by_party = _reason_map(d)
        (r,) = [r for r in by_party["platform"] if r.code == "PARTY_POINTS"]
        assert _points_of(r) == 0.0 and "0 points" in r.text and d.degraded
        part, table = parts["bank"]
        bank = float(part.partial_points(np.array([table.row(d.sme_id)]), {"tax_bureau": np.array([True]), "platform": np.array([False])})[0])
        tax_part, tax_table = parts["tax_bureau"]
        want = bank + float(tax_part.partial_points(np.array([tax_table.row(d.sme_id)]))[0])
        assert abs(d.points - want) <= 1e-9
        assert {s.party: s.points for s in d.parties}["platform"] == 0.0


# ------------------------------------------------------------------ bundles, read as bytes
def _raw_bundle(folder: Path) -> tuple[str, dict, dict[str, np.ndarray]]:
    """Every file's text (the safetensors header only), the metadata JSON and every array, parsed from the bytes."""
    text = []
    assert sorted(f.name for f in folder.iterdir()) == ["MANIFEST.json", "MANIFEST.sig", "model.json", "model.safetensors"]
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        if f.name == "MANIFEST.sig":  # 64 bytes of Ed25519 signature
            assert len(data) == 64
        elif f.name.endswith(".safetensors"):
            n = struct.unpack("<Q", data[:8])[0]
            header = json.loads(data[8 : 8 + n])
            arrays = {}
            for name, spec in header.items():
                if name == "__metadata__":
                    continue
                assert spec["dtype"] == "F64", spec
                a, b = spec["data_offsets"]
                arrays[name] = np.frombuffer(data[8 + n + a : 8 + n + b], dtype="<f8")
            text.append(data[8 : 8 + n].decode())
        else:
            text.append(data.decode())
    meta = json.loads((folder / "model.json").read_bytes())
    return "\n".join(text), meta, arrays


def test_each_partys_bundle_holds_its_own_points_table_only(ex):
    raw = {p: _raw_bundle(Path(ex.bundles[p])) for p in PARTIES}
    # WOE and points values (0 points: a feature whose coefficient the sign constraint held at 0 — in any table)
    values = {p: {float(v) for k, a in raw[p][2].items() if not k.startswith("edges.") for v in a} - {0.0} for p in PARTIES}
    for p in PARTIES:
        text, meta, arrays = raw[p]
        assert meta["kind"] == "points_scorecard.part" and meta["party"] == p
        assert [f["name"] for f in meta["features"]] == NAMES[p]
        assert sorted(arrays) == sorted(f"{w}.{j}" for j in range(len(NAMES[p])) for w in ("edges", "woe", "points"))
        others = [n for q in PARTIES if q != p for n in NAMES[q]]
        assert not [n for n in others if n in text], p  # no name of another party's feature
        for q in PARTIES:
            if q != p:
                assert not values[p] & values[q], (p, q)  # no WOE or points value of another party's
    bank_meta, tax_meta, platform_meta = (raw[p][1] for p in PARTIES)
    assert bank_meta["base_points"] is not None and bank_meta["feature_holders"] == list(FEATURE_HOLDERS)
    for meta in (tax_meta, platform_meta):
        assert meta["base_points"] is None and meta["indicators"] == [] and "feature_holders" not in meta
        assert meta["label_holder"] == "bank"


# ------------------------------------------------------------------ bad input: one line
def _resigned(ex: ExampleFederation, party: str, folder: Path, edit) -> Path:
    from fedrisk.models.bundle import load_model_bundle

    arrays, meta = load_model_bundle(ex.bundles[party], [ex.signers[party].public_key_bytes])
    edit(arrays, meta)
    return write_model_bundle(folder, arrays, meta, ex.signers[party])


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    return msg


def test_a_points_bundle_for_a_feature_the_party_does_not_have_is_one_line(ex, tmp_path):
    def foreign(arrays, meta):  # the tax bureau's first feature renamed to the platform's
        meta["features"][0]["name"] = "gmv"

    def declared(arrays, meta):  # ...and declared in its schema too: its table still has no such column
        foreign(arrays, meta)
        meta["schema"]["features"]["gmv"] = "float"

    for edit, words in ((foreign, "'gmv', which its recorded schema does not declare"), (declared, "missing declared column(s) 'gmv'")):
        bundle = _resigned(ex, "tax_bureau", tmp_path / edit.__name__, edit)
        with pytest.raises(DataValidationError) as err:
            PartyScoringService(_party_config(ex, "tax_bureau", bundle=str(bundle)))
        assert words in _one_line(err)


def test_bad_points_deployments_are_one_line(ex, tmp_path):
    keys = [s.public_key_bytes for s in ex.signers.values()]
    no_holders = _resigned(ex, "bank", tmp_path / "no-holders", lambda a, m: m.pop("feature_holders"))
    with pytest.raises(ProtocolError) as err:
        load_bank_model(no_holders, keys)
    assert "does not name its feature holders" in _one_line(err)
    sneaky = _resigned(ex, "tax_bureau", tmp_path / "sneaky", lambda a, m: m.update(feature_holders=["platform"]))
    with pytest.raises(ProtocolError) as err:
        load_party_model(sneaky, keys)
    assert "holds the label holder's part" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        load_bank_model(ex.bundles["tax_bureau"], keys)
    assert "feature holder's part" in _one_line(err)
    parties = {p: PartyEndpoint("127.0.0.1:9") for p in FEATURE_HOLDERS}
    with pytest.raises(ConfigError) as err:  # the node's policy speaks other points than the scorecard
        ScoringNode(_node_config(ex, parties, tmp_path, policy=_patient_policy(tmp_path, base_points="650")))
    assert "is not the policy's" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        ScoringNode(_node_config(ex, {"tax_bureau": parties["tax_bureau"]}, tmp_path))
    assert "needs feature holder 'platform'" in _one_line(err)


# ------------------------------------------------------------------ fedrisk demo --model scorecard
def test_demo_scorecard_prints_and_writes_the_banks_points_table_only(tmp_path):
    from fedrisk.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["demo", "--model", "scorecard", "--rows", "2000", "--epochs", "8", "--runs-dir", str(tmp_path), "--json"], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads([ln for ln in result.output.splitlines() if ln.startswith("{")][-1])
    run_dir = Path(summary["run_dir"])
    assert summary["model"] == "scorecard" and summary["scoring"]["applications"] == 400
    assert summary["scoring"]["max_abs_score_diff_vs_offline"] <= 1e-9
    written = sorted(p.name for p in run_dir.glob("points_*.csv"))
    assert written == ["points_bank.csv"]
    import pandas as pd

    table = pd.read_csv(run_dir / "points_bank.csv")
    assert list(table.columns) == ["feature", "bin", "woe", "points"]
    assert set(table["feature"]) == {*NAMES["bank"], "covered:tax_bureau", "covered:platform", "(base points)"}
    out = result.output
    assert "Points table — bank's own features" in out and all(n in out for n in NAMES["bank"]) and "(base points)" in out
    others = [n for p in FEATURE_HOLDERS for n in NAMES[p]]
    assert not [n for n in others if n in out]  # nothing of another party's table, nor its features
    assert not [n for n in others if n in (run_dir / "points_bank.csv").read_text()]
    # the bank's table is the one in the bank's own signed bundle
    bundle = run_dir / "federation" / "bundles" / "bank"
    keys = json.loads((run_dir / "federation" / "trusted_keys.json").read_text())
    bank = load_bank_model(bundle, [bytes.fromhex(k) for k in keys.values()]).part
    np.testing.assert_allclose(table["points"].to_numpy(), bank.table()["points"].to_numpy(), rtol=0, atol=1e-12)


def test_demo_refuses_an_unknown_model_in_one_line(tmp_path):
    from fedrisk.cli import app

    result = CliRunner().invoke(app, ["demo", "--model", "points", "--runs-dir", str(tmp_path)], env={"COLUMNS": "200"})
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "'scorecard'" in lines[0], result.output
