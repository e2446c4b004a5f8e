"""Regressions for the bugs and behaviour the mypy clean-up (issue 15) touched."""

from __future__ import annotations

import numpy as np
import pytest

from fedrisk.errors import ConfigError, ProtocolError
from fedrisk.wire.config_values import config_bytes, config_float, config_int, config_strings
from fedrisk.wire.exchange import Exchange, ExchangeHeader

FP = "0123456789abcdef" * 2  # a 128-bit context fingerprint


def _exchange(config: dict[str, object] | None = None, blobs: dict[str, bytes] | None = None, content_class: str = "public") -> Exchange:
    header = ExchangeHeader(run_id="r1", round=1, step="test.step", sender="bank_a", receiver="coordinator", content_class=content_class)
    return Exchange(header=header, blobs=dict(blobs or {}), config=dict(config or {}))


def test_ckks_aggregation_before_the_public_context_is_a_protocol_error():
    """``add_encrypted(None, ...)`` used to fail with an unrelated error deep in the CKKS code."""
    from fedrisk.federation.horizontal import Aggregator

    reply = _exchange(blobs={"vector": b"\x00" * 8}, content_class="ciphertext")
    with pytest.raises(ProtocolError, match="public context"):
        Aggregator("ckks").sum({"bank_a": reply})


def test_plain_aggregation_is_unchanged():
    from fedrisk.federation.horizontal import Aggregator

    replies = {n: _exchange(blobs={"vector": np.array([1.0, 2.0], dtype="<f8").tobytes()}, content_class="plaintext") for n in ("a", "b")}
    assert np.frombuffer(Aggregator("plain").sum(replies), dtype="<f8").tolist() == [2.0, 4.0]


def test_run_config_options_typed_dict_matches_the_run_config_keys():
    from fedrisk.protocols.fedavg import FedAvgConfig, RunConfigOptions

    assert set(RunConfigOptions.__annotations__) == set(FedAvgConfig.RUN_CONFIG_KEYS.values())
    options = FedAvgConfig.options_from_run_config({"min-parties": 3.0, "dp-noise-seed": "5", "sim-dropout": 0})
    assert options == {"min_parties": 3, "dp_noise_seed": 5, "sim_dropout": 0.0}
    assert type(options["min_parties"]) is int and type(options["sim_dropout"]) is float
    with pytest.raises(ConfigError, match="run config dp-clip"):
        FedAvgConfig.options_from_run_config({"dp-clip": [1.0]})
    with pytest.raises(ConfigError, match="run config dp-clip"):
        FedAvgConfig.options_from_run_config({"dp-clip": "wide"})


def test_config_values_convert_like_int_and_float_and_refuse_other_types():
    exchange = _exchange({"n": 3, "text": "4", "x": 2, "blob": b"ab", "names": ["a", "b"], "bad": [1]})
    assert config_int(exchange, "n") == 3 and config_int(exchange, "text") == 4
    assert config_int(exchange, "missing", 7) == 7
    assert config_float(exchange, "x") == 2.0 and isinstance(config_float(exchange, "x"), float)
    assert config_bytes(exchange, "blob") == b"ab"
    assert config_strings(exchange, "names") == ["a", "b"]
    with pytest.raises(ProtocolError, match="'bad'"):
        config_int(exchange, "bad")
    with pytest.raises(ProtocolError, match="not bytes"):
        config_bytes(exchange, "n")
    with pytest.raises(ProtocolError, match="not a list of strings"):
        config_strings(exchange, "bad")
    with pytest.raises(ProtocolError, match="lacks 'missing'"):
        config_float(exchange, "missing")


def test_simulation_numeric_checks_report_a_non_number():
    from fedrisk.simulation.spec import at_least, between, positive, positive_or_inf

    for check in (positive, positive_or_inf, at_least(1), between(0, 1)):
        assert check("x") == "must be a number"
    assert positive(1) is None and positive(0) == "must be > 0"
    assert between(0, 1, low_open=True)(0.0) is not None and between(0, 1)(0.5) is None


def test_encode_ids_from_an_object_array_takes_the_slow_path_on_its_items():
    from fedrisk.crypto.psi import encode_ids

    assert encode_ids(np.array([b"a", "b"], dtype=object), "bank") == [b"a", b"b"]
    assert encode_ids(np.array(["a", "b"]), "bank") == [b"a", b"b"]


def test_ckks_context_field_parser_handles_every_wire_type():
    from fedrisk.crypto.seal_runtime import pb_fields

    # field 1 varint 150, field 2 fixed64, field 3 bytes "hi", field 4 fixed32
    data = bytes([0x08, 0x96, 0x01, 0x11]) + bytes(8) + bytes([0x1A, 0x02]) + b"hi" + bytes([0x25]) + bytes(4)
    fields = pb_fields(memoryview(data))
    assert fields[1] == [150] and bytes(fields[3][0]) == b"hi" and len(fields[2][0]) == 8 and len(fields[4][0]) == 4


def test_exchange_header_with_a_list_as_round_is_a_protocol_error():
    """A peer's header whose round is a list used to escape as a bare TypeError from ``int()``."""
    from flwr.app import ConfigRecord

    fields = {"run_id": "r1", "step": "s", "sender": "a", "receiver": "b", "content_class": "public", "key_fingerprint": ""}
    with pytest.raises(ProtocolError, match="round"):
        ExchangeHeader.from_record(ConfigRecord({**fields, "round": [1, 2]}))
    assert ExchangeHeader.from_record(ConfigRecord({**fields, "round": 3})).round == 3


def test_audit_report_run_filter_keeps_the_snapshot_fields_tuples():
    """``only_run`` used to put lists where :class:`LedgerSnapshot` declares tuples."""
    from types import SimpleNamespace

    from fedrisk.audit.report import only_run
    from fedrisk.audit.store import LedgerSnapshot

    entries = tuple(SimpleNamespace(run_id=r) for r in ("a", "b", "a"))
    snap = LedgerSnapshot(path="x.db", meta={}, entries=entries, bodies=("1", "2", "3"), triggers=frozenset())
    only = only_run(snap, "a")
    assert isinstance(only.entries, tuple) and isinstance(only.bodies, tuple)
    assert [e.run_id for e in only.entries] == ["a", "a"] and only.bodies == ("1", "3")


def test_portfolio_applications_still_take_numpy_amounts():
    """The amount check now converts to float first; numpy integers still count as amounts."""
    import pandas as pd

    from fedrisk.scoring.portfolio import applications
    from fedrisk.v1 import scoring_pb2 as pb

    df = pd.DataFrame(
        {"sme_id": ["s1", "s2", "s3"], "requested_amount": np.array([5, 0, -1], dtype=np.int64), "declared_annual_revenue": [1.5, float("nan"), 2.0]}
    )
    invalid: dict[int, str] = {}
    apps = dict(applications(df, "opaque", pb.PREAPPROVAL, True, invalid))
    assert not invalid
    assert apps[0].requested_amount == 5.0 and apps[0].declared_annual_revenue == 1.5
    assert not apps[1].HasField("requested_amount") and not apps[1].HasField("declared_annual_revenue")
    assert not apps[2].HasField("requested_amount") and apps[2].declared_annual_revenue == 2.0
    assert apps[0].purpose == pb.PREAPPROVAL
