"""The committed fedrisk.v1 stubs are exactly what protoc generates from protos/fedrisk/v1/scoring.proto."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTO = "fedrisk/v1/scoring.proto"
GENERATED = ("scoring_pb2.py", "scoring_pb2.pyi", "scoring_pb2_grpc.py")
# Lines that name the generating tool's own version: they change with grpcio-tools,
# not with the proto, so they are compared without the version number.
_STAMPS = [
    (re.compile(r"^(# Protobuf Python Version:) .*$", re.MULTILINE), r"\1 X"),
    (re.compile(r"^(GRPC_GENERATED_VERSION =) .*$", re.MULTILINE), r"\1 X"),
    (re.compile(r"(_runtime_version\.Domain\.PUBLIC,\s*)\d+,\s*\d+,\s*\d+,\s*'[^']*',", re.MULTILINE), r"\1X,"),
]


def _normalise(text: str) -> str:
    for pattern, repl in _STAMPS:
        text = pattern.sub(repl, text)
    return text


def test_regenerating_the_stubs_gives_no_diff(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (test extra) is needed to regenerate stubs")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
           f"--grpc_python_out={tmp_path}", str(ROOT / "protos" / PROTO)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in GENERATED:
        fresh = (tmp_path / "fedrisk" / "v1" / name).read_text()
        committed = (ROOT / "fedrisk" / "v1" / name).read_text()
        assert _normalise(fresh) == _normalise(committed), f"fedrisk/v1/{name} is stale: regenerate it (see fedrisk/v1/__init__.py)"


def test_api_is_versioned_and_a_second_model_kind_fits_without_a_wire_change():
    from fedrisk.v1 import scoring_pb2 as pb

    assert pb.DESCRIPTOR.package == "fedrisk.v1"
    assert set(pb.DESCRIPTOR.services_by_name) == {"ScoringService", "PartyScoringService"}
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in pb.DESCRIPTOR.services_by_name["ScoringService"].methods}
    assert methods["Score"] == (False, False) and methods["ScoreBatch"] == (True, True)
    oneof = pb.PartyAnswer.DESCRIPTOR.oneofs_by_name["part"]
    assert {f.name for f in oneof.fields} == {"scorecard", "routing"}
    # a tree-routing answer travels in the same response message
    answer = pb.PartyAnswer(sme_id="x", state=pb.COVERED, routing=pb.TreeRouting(branches={7: pb.LEFT, 9: pb.RIGHT}))
    again = pb.PartyScoreResponse.FromString(pb.PartyScoreResponse(answers=[answer]).SerializeToString()).answers[0]
    assert again.WhichOneof("part") == "routing" and dict(again.routing.branches) == {7: pb.LEFT, 9: pb.RIGHT}
    for field in ("request_id", "deadline_ms", "sme_ids", "model_version", "kind"):
        assert field in pb.PartyScoreRequest.DESCRIPTOR.fields_by_name
