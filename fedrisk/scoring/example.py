"""A small, fully trained federation on disk, for examples, tests and benchmarks.

:func:`build_example` draws synthetic SME data, trains the vertical scorecard
(:func:`build_secureboost_example`: vertical SecureBoost trees;
:func:`build_points_example`: the federated WOE scorecard as points;
:func:`build_stacking_example`: a stack of both with the bank's meta-learner) in-process
over the real encrypted protocol, has each party sign its own bundle, and writes
everything a scoring deployment needs into one folder::

    tables/{bank,tax_bureau,platform}.csv    each party's own table
    bundles/{bank,tax_bureau,platform}/      signed model bundles (each party's part; for a
                                             stack, a stack folder of one bundle per base learner)
    trusted_keys.json                        party -> Ed25519 public key (hex)
    allow/{tax_bureau,platform}.txt          IDs each party may answer for (trained intersection)
    pki/                                     federation CA, client and server certificates
    signing/<party>.key                      the parties' signing keys (0600)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrisk.crypto.keyfiles import write_public_file
from fedrisk.crypto.pki import (
    FederationPKI,
    create_federation_pki,
    create_server_cert,
    load_federation_pki,
)
from fedrisk.crypto.signing import SigningIdentity
from fedrisk.models.bundle import write_model_bundle
from fedrisk.models.scorecard import feature_holder_bundle, label_holder_bundle
from fedrisk.models.vertical_lr import make_context, train_vertical_lr
from fedrisk.data.synthetic import SyntheticSMEData, generate_sme_data

_INDEX = "example.json"

__all__ = [
    "FEATURE_HOLDERS",
    "LOAN_SYSTEM",
    "NODE_CERT",
    "ExampleFederation",
    "build_example",
    "build_points_example",
    "build_secureboost_example",
    "build_stacking_example",
    "load_or_build_example",
]

FEATURE_HOLDERS = ("tax_bureau", "platform")
NODE_CERT = "scoring-node"
LOAN_SYSTEM = "loan_system"


@dataclass
class ExampleFederation:
    """Paths (and the data) of a trained example federation."""

    folder: Path
    data: SyntheticSMEData | None
    run_id: str
    pki: FederationPKI
    tables: dict[str, Path] = field(default_factory=dict)
    bundles: dict[str, Path] = field(default_factory=dict)
    allow_lists: dict[str, Path] = field(default_factory=dict)
    trusted_keys: Path = Path()
    signers: dict[str, SigningIdentity] = field(default_factory=dict, repr=False)
    offline_pd: dict[str, float] = field(default_factory=dict, repr=False)
    offline_score: dict[str, float] = field(default_factory=dict, repr=False)  # points models: each bank SME's points
    model: Any = field(default=None, repr=False)  # the trained model, in the process that built it (None when reloaded)

    def server_cert(self, name: str) -> tuple[Path, Path]:
        """``(cert, key)`` of a server certificate (the node's or a party service's)."""
        return self.pki.server_certs[name]

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """``(cert, key)`` of a party's client certificate."""
        return self.pki.party_certs[name]


def _prepare(root: Path, rows: int, seed: int, run_id: str) -> tuple[SyntheticSMEData, ExampleFederation]:
    """Draw the data, write the tables, the PKI and the parties' signing keys."""
    data = generate_sme_data(rows, seed=seed)
    paths = data.write_csv(root / "tables")
    pki = create_federation_pki(root / "pki", parties=["bank", *FEATURE_HOLDERS, LOAN_SYSTEM])
    for name in (NODE_CERT, *(f"{p}-scoring" for p in FEATURE_HOLDERS)):
        create_server_cert(pki, name, ["127.0.0.1", "localhost"])
    ex = ExampleFederation(folder=root, data=data, run_id=run_id, pki=pki, tables=dict(paths))
    for party in ("bank", *FEATURE_HOLDERS):
        ex.signers[party] = SigningIdentity.generate()
        ex.signers[party].save(root / "signing" / f"{party}.key")
    return data, ex


def _finish(ex: ExampleFederation, data: SyntheticSMEData, pd: np.ndarray, **extra: object) -> ExampleFederation:
    """Allow-lists, trusted keys, offline PDs and the index that :func:`load_or_build_example` reads."""
    root = ex.folder
    bank_ids = set(data.bank.ids.tolist())
    for party in FEATURE_HOLDERS:
        intersection = sorted(bank_ids & set(data.parties[party].ids.tolist()))
        ex.allow_lists[party] = write_public_file(root / "allow" / f"{party}.txt", ("\n".join(intersection) + "\n").encode())
    keys = {p: s.public_key_bytes.hex() for p, s in ex.signers.items()}
    ex.trusted_keys = write_public_file(root / "trusted_keys.json", json.dumps(keys, indent=2, sort_keys=True).encode())
    ex.offline_pd = dict(zip(data.bank.ids.tolist(), np.asarray(pd, dtype=float).tolist()))
    index = {
        "run_id": ex.run_id,
        "rows": len(data.bank.ids),
        "seed": data.seed,
        **extra,
        "tables": {k: str(v) for k, v in ex.tables.items()},
        "bundles": {k: str(v) for k, v in ex.bundles.items()},
        "allow_lists": {k: str(v) for k, v in ex.allow_lists.items()},
        "trusted_keys": str(ex.trusted_keys),
        "offline_pd": ex.offline_pd,
    }
    write_public_file(root / _INDEX, json.dumps(index).encode())
    return ex


def build_example(folder: str | Path, *, rows: int = 3000, seed: int = 11, max_epochs: int = 8, run_id: str = "example-run") -> ExampleFederation:
    """Train and write an example federation (about 3 s for 3,000 SMEs on 2 cores).

    ``offline_pd`` of the result maps each bank SME to the trained model's
    probability of default (plaintext scoring of the same model, in-process) —
    what the deployed node must reproduce.
    """
    root = Path(folder)
    data, ex = _prepare(root, rows, seed, run_id)
    tables = {name: table for name, table in data.parties.items()}
    model = train_vertical_lr(tables["bank"], {p: tables[p] for p in FEATURE_HOLDERS}, context=make_context(), max_epochs=max_epochs, random_state=seed)
    arrays, meta = label_holder_bundle(model.label_holder_, run_id=run_id, schema=tables["bank"].schema.to_dict())
    ex.bundles["bank"] = write_model_bundle(root / "bundles" / "bank", arrays, meta, ex.signers["bank"])
    for party in FEATURE_HOLDERS:
        arrays, meta = feature_holder_bundle(model.feature_holders_[party], run_id=run_id, label_holder="bank", schema=tables[party].schema.to_dict())
        ex.bundles[party] = write_model_bundle(root / "bundles" / party, arrays, meta, ex.signers[party])
    pd = model.predict_proba(tables["bank"], {p: tables[p] for p in FEATURE_HOLDERS}, secure=False)[:, 1]
    return _finish(ex, data, pd)


def build_secureboost_example(
    folder: str | Path,
    *,
    rows: int = 1500,
    seed: int = 11,
    trees: int = 4,
    depth: int = 3,
    run_id: str = "example-secureboost",
) -> ExampleFederation:
    """Train vertical SecureBoost (CKKS, in-process) and write its signed bundles like :func:`build_example`.

    The bank's bundle holds the trees, leaf weights and its own thresholds; each
    feature holder's holds only its own thresholds. ``offline_pd`` is the trained
    model's ``predict_proba`` with every party answering on its own table.
    """
    from fedrisk.models.secureboost import (
        feature_holder_bundle as sb_feature_holder_bundle,
    )
    from fedrisk.models.secureboost import label_holder_bundle as sb_label_holder_bundle
    from fedrisk.models.secureboost import train_secureboost

    root = Path(folder)
    data, ex = _prepare(root, rows, seed, run_id)
    tables = {name: table for name, table in data.parties.items()}
    others = {p: tables[p] for p in FEATURE_HOLDERS}
    model = train_secureboost(tables["bank"], others, n_trees=trees, max_depth=depth, random_state=seed)
    arrays, meta = sb_label_holder_bundle(model.label_holder_)
    meta.update(run_id=run_id, party="bank", schema=tables["bank"].schema.to_dict())
    ex.bundles["bank"] = write_model_bundle(root / "bundles" / "bank", arrays, meta, ex.signers["bank"])
    for party in FEATURE_HOLDERS:
        arrays, meta = sb_feature_holder_bundle(model.feature_holders_[party])
        meta.update(run_id=run_id, party=party, schema=tables[party].schema.to_dict())
        ex.bundles[party] = write_model_bundle(root / "bundles" / party, arrays, meta, ex.signers[party])
    pd = model.predict_proba(tables["bank"], others)[:, 1]
    return _finish(ex, data, pd, model="secureboost", trees=trees, depth=depth)


def build_points_example(
    folder: str | Path,
    *,
    rows: int = 3000,
    seed: int = 11,
    max_epochs: int = 10,
    n_bins: int = 8,
    min_bin_size: int = 50,
    holdout: float = 0.0,
    run_id: str = "example-points",
) -> ExampleFederation:
    """Train the federated WOE scorecard (in-process, encrypted protocols), convert it to points and write its bundles.

    Each party's bundle is its own points table (:meth:`PointsScorecard.bundle`:
    its own features, bins and points, the public scale, whom it serves), signed by
    that party. ``offline_score`` maps each bank SME to its score from the points
    tables scored in this process (:meth:`PointsScorecard.score`), ``offline_pd``
    to ``σ((offset − score) / factor)``. ``holdout``: the share of the bank's
    SMEs (the last ones, in table order) left out of training.
    """
    import pandas as pd

    from fedrisk.models.points import train_points_scorecard

    root = Path(folder)
    data, ex = _prepare(root, rows, seed, run_id)
    frames = {p: pd.DataFrame(t.feature_matrix(), columns=t.feature_names, index=t.ids) for p, t in data.parties.items()}
    label = str(data.bank.schema.label_column)
    frames["bank"][label] = data.bank.labels
    n_train = len(data.bank.ids) - round(holdout * len(data.bank.ids))
    card, _woe, _lr = train_points_scorecard(
        frames["bank"].iloc[:n_train],
        {p: frames[p] for p in FEATURE_HOLDERS},
        label=label,
        n_bins=n_bins,
        min_bin_size=min_bin_size,
        max_epochs=max_epochs,
    )
    for party, table in data.parties.items():
        arrays, meta = card.bundle(party, run_id=run_id, schema=table.schema.to_dict())
        ex.bundles[party] = write_model_bundle(root / "bundles" / party, arrays, meta, ex.signers[party])
    score = card.score(frames)
    ex.offline_score = dict(zip(data.bank.ids.tolist(), score.tolist()))
    z = (card.scale.offset - score) / card.scale.factor
    pd_ = 0.5 * (1.0 + np.tanh(0.5 * z))
    return _finish(ex, data, pd_, model="points", trained_rows=n_train, offline_score=ex.offline_score)


def build_stacking_example(
    folder: str | Path,
    *,
    rows: int = 600,
    seed: int = 11,
    n_folds: int = 2,
    max_epochs: int = 6,
    trees: int = 3,
    depth: int = 3,
    n_bins: int = 16,
    run_id: str = "example-stacking",
) -> ExampleFederation:
    """Train a stack (:class:`~fedrisk.models.stacking.VerticalStacking`: vertical LR and SecureBoost, each over its
    encrypted protocol on K folds and refitted, the bank's meta-learner on the out-of-fold log-odds) and write it
    as stack folders: one signed bundle per base learner per party, and the bank's meta-learner bundle.

    ``bundles/bank/`` holds ``vertical_lr/``, ``secureboost/`` (the bank's part of each, run ids
    ``<run_id>.vertical_lr`` and ``<run_id>.secureboost``) and ``meta/`` (kind ``stacking_meta``, naming its base
    learners' run ids and bundle digests); ``bundles/<party>/`` holds the party's part of each base learner.
    ``ex.bundles`` also has each base bundle as ``"<party>.<base>"``. ``offline_pd`` is the trained stack's
    :meth:`~fedrisk.models.stacking.VerticalStacking.predict_proba` (``secure=False``: plaintext sums of the same
    partial scores) on the bank's rows; ``ex.model`` the stack itself.
    """
    from fedrisk.models.bundle import write_model_bundle as write
    from fedrisk.models.secureboost import (
        feature_holder_bundle as sb_feature_holder_bundle,
    )
    from fedrisk.models.secureboost import label_holder_bundle as sb_label_holder_bundle
    from fedrisk.models.stacking import VerticalStacking
    from fedrisk.scoring.bundles import load_bank_model

    root = Path(folder)
    data, ex = _prepare(root, rows, seed, run_id)
    tables = dict(data.parties)
    others = {p: tables[p] for p in FEATURE_HOLDERS}
    stack = VerticalStacking(
        n_folds=n_folds,
        lr_params={"max_epochs": max_epochs, "random_state": seed},
        sb_params={"n_trees": trees, "max_depth": depth, "n_bins": n_bins, "random_state": seed},
        label=str(data.bank.schema.label_column),
        random_state=seed,
        progress=False,
    ).fit(tables["bank"], others)
    run_ids = {name: f"{run_id}.{name}" for name in stack.meta_.names}
    folders = {party: root / "bundles" / party for party in ("bank", *FEATURE_HOLDERS)}
    for name, model in stack.base_learners_.items():
        rid = run_ids[name]
        for party in ("bank", *FEATURE_HOLDERS):
            schema = tables[party].schema.to_dict()
            if name == "vertical_lr" and party == "bank":
                arrays, meta = label_holder_bundle(model.label_holder_, run_id=rid, schema=schema)
            elif name == "vertical_lr":
                arrays, meta = feature_holder_bundle(model.feature_holders_[party], run_id=rid, label_holder="bank", schema=schema)
            else:
                part = model.label_holder_ if party == "bank" else model.feature_holders_[party]
                arrays, meta = sb_label_holder_bundle(part) if party == "bank" else sb_feature_holder_bundle(part)
                meta.update(run_id=rid, party=party, schema=schema)
            ex.bundles[f"{party}.{name}"] = write(folders[party] / name, arrays, meta, ex.signers[party])
    bank_key = [ex.signers["bank"].public_key_bytes]
    record = stack.meta_.to_record()
    meta = {
        "kind": "stacking_meta",
        "run_id": run_id,
        "party": "bank",
        "base_learners": record["names"],
        "intercept": record["intercept"],
        "base_run_ids": run_ids,
        "base_digests": {n: load_bank_model(ex.bundles[f"bank.{n}"], bank_key).digest for n in record["names"]},
        "meta_fit": f"{n_folds}-fold out-of-fold log-odds",
    }
    ex.bundles["bank.meta"] = write(folders["bank"] / "meta", {"coef": np.asarray(record["coef"], dtype=np.float64)}, meta, ex.signers["bank"])
    for party, path in folders.items():
        ex.bundles[party] = path
    ex.model = stack
    pd_ = stack.predict_proba(tables["bank"], others, secure=False)[:, 1]
    return _finish(ex, data, pd_, model="stacking", n_folds=n_folds, trees=trees, depth=depth, max_epochs=max_epochs, base_run_ids=run_ids)


def load_or_build_example(folder: str | Path, **kwargs: object) -> ExampleFederation:
    """Reuse an example federation already written to ``folder`` (same arguments), else build it.

    ``model="secureboost"`` reuses or builds :func:`build_secureboost_example`,
    ``model="points"`` :func:`build_points_example`, ``model="stacking"``
    :func:`build_stacking_example` (default: the scorecard of
    :func:`build_example`). The reloaded federation has
    no in-memory ``data`` nor signing identities (their keys are in ``signing/``).
    """
    root = Path(folder)
    model = str(kwargs.pop("model", "vertical_lr"))
    builders: dict[str, Callable[..., ExampleFederation]] = {
        "secureboost": build_secureboost_example, "points": build_points_example, "stacking": build_stacking_example,
    }  # fmt: skip
    build = builders.get(model, build_example)
    defaults = {
        "secureboost": {"rows": 1500, "run_id": "example-secureboost", "trees": 4},
        "points": {"rows": 3000, "run_id": "example-points"},
        "stacking": {"rows": 600, "run_id": "example-stacking", "trees": 3, "n_folds": 2},
    }.get(model, {"rows": 3000, "run_id": "example-run"})
    index_path = root / _INDEX
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        wanted = {"seed": kwargs.get("seed", 11), **{k: kwargs.get(k, v) for k, v in defaults.items()}}
        if index.get("model", "vertical_lr") == model and all(index.get(k) == v for k, v in wanted.items()):
            return ExampleFederation(
                folder=root,
                data=None,
                run_id=index["run_id"],
                pki=load_federation_pki(root / "pki"),
                tables={k: Path(v) for k, v in index["tables"].items()},
                bundles={k: Path(v) for k, v in index["bundles"].items()},
                allow_lists={k: Path(v) for k, v in index["allow_lists"].items()},
                trusted_keys=Path(index["trusted_keys"]),
                signers={p: SigningIdentity.load(root / "signing" / f"{p}.key") for p in ("bank", *FEATURE_HOLDERS)},
                offline_pd={k: float(v) for k, v in index["offline_pd"].items()},
                offline_score={k: float(v) for k, v in (index.get("offline_score") or {}).items()},
            )
    return build(root, **kwargs)
