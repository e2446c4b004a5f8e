"""The relay's content encoding: Flower's protobuf bytes exactly, built without Flower's copies; replies sent encoded once."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedrisk.parties.relay import PartyRelayServer, decode_content, encode_content, relay_call
from fedrisk.wire.exchange import ExchangeHeader, build_content, read_content


def _contents() -> list[RecordDict]:
    header = ExchangeHeader("run-1", 3, "sb.round", "coordinator", "bank", "ciphertext", "fp")
    mixed = build_content(header, {"item:0": os.urandom(300_000), "empty": b""}, {"tree": 2, "mask": b"\x00\x01", "loss": 0.25, "done": False})
    mixed["metrics"] = MetricRecord({"auc": 0.78, "rows": 24_000, "curve": [0.1, 0.2]})
    mixed["nothing"] = ArrayRecord()
    with_numpy = RecordDict({"weights": ArrayRecord([np.arange(12, dtype=np.float32).reshape(3, 4)])})
    return [RecordDict({}), build_content(header), mixed, with_numpy, RecordDict({"cfg": ConfigRecord({"names": ["a", "b"], "flags": [True]})})]


@pytest.mark.parametrize("index", range(5))
def test_encoding_is_flowers_byte_for_byte_and_decodes_back(index):
    content = _contents()[index]
    encoded = encode_content(content)
    assert encoded == recorddict_to_proto(content).SerializeToString()
    assert encode_content(decode_content(encoded)) == encoded


def test_a_blob_survives_the_relay_encoding_unchanged():
    blob = os.urandom(2_000_000)
    content = build_content(ExchangeHeader("run-1", 0, "sb.join", "tax_bureau", "coordinator", "ciphertext", "fp"), {"item:0": blob})
    assert read_content(decode_content(encode_content(content))).blob("item:0") == blob


def test_a_handler_may_answer_with_bytes_already_encoded(tmp_path):
    """The party process sends the bytes its durable state kept, and the caller decodes the same content."""
    reply = build_content(ExchangeHeader("run-1", 0, "sb.join", "tax_bureau", "coordinator", "public"), {"item:0": b"bins"}, {"rows": 7})
    encoded = encode_content(reply)
    path = tmp_path / "party.sock"
    server = PartyRelayServer(path, lambda message_type, meta, content: encoded)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        got = relay_call(path, "sb.join", {}, RecordDict({}))
    finally:
        server.shutdown()
        server.server_close()
    assert encode_content(got) == encoded
    assert read_content(got).blob("item:0") == b"bins"
