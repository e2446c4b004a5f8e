"""Audit report: JSON + self-contained, escaped HTML."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

from fedrisk.audit import Ed25519Signer, ExchangeRecord, Ledger, build_report
from fedrisk.audit.store import TRIGGERS

HOSTILE = '<script>alert("x")</script>$\\frac{a}{b}$_&'
VOID = {"meta", "img", "br", "hr", "input", "link"}


def build_run(tmp_path: Path, party: str = "tax_bureau", plaintext: bool = False) -> tuple[list[Path], dict[str, bytes]]:
    nodes = ("coordinator", "bank", party)
    signers = {n: Ed25519Signer.generate() for n in nodes}
    ledgers = {n: Ledger(tmp_path / "ledgers" / f"{re.sub(r'[^a-z_]', '_', n)}.sqlite", n, signers[n]) for n in nodes}
    plan = [
        (0, "psi", "bank", "coordinator", "public", 300),
        (0, "psi", party, "coordinator", "public", 280),
        (1, "residual", "bank", "coordinator", "ciphertext", 90_000),
        (1, "residual", "coordinator", party, "ciphertext", 90_000),
        (1, "gradient", party, "coordinator", "masked", 4_000),
        (1, "gradient", "coordinator", "bank", "masked", 4_000),
        (2, "residual", "bank", "coordinator", "ciphertext", 91_000),
        (2, "model", "coordinator", "bank", "plaintext" if plaintext else "aggregate", 500),
    ]
    for rnd, step, sender, receiver, cls, size in plan:
        for direction, writer in (("sent", sender), ("received", receiver)):
            ledgers[writer].append(
                ExchangeRecord.of_payload(
                    bytes(size),
                    run_id="run-42",
                    round=rnd,
                    step=step,
                    sender=sender,
                    receiver=receiver,
                    message_type=f"vlr.{step}",
                    direction=direction,
                    content_class=cls,
                    key_fingerprint="" if cls == "public" else "ctx-9a",
                )
            )
    for led in ledgers.values():
        led.close()
    return [led.path for led in ledgers.values()], {n: s.public_key_bytes for n, s in signers.items()}


class _Checker(HTMLParser):
    """Tracks open elements; records any mismatched close tag and every tag seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.img_src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.img_src.append(dict(attrs).get("src") or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html_text: str) -> _Checker:
    checker = _Checker()
    checker.feed(html_text)
    checker.close()
    return checker


def test_clean_run_report(tmp_path: Path) -> None:
    paths, keys = build_run(tmp_path)
    result = build_report(paths, tmp_path / "report", trusted_keys=keys)
    assert result.ok and result.findings == ()
    doc = json.loads(result.json_path.read_text())
    assert doc["ok"] is True and doc["findings"] == [] and doc["run_ids"] == ["run-42"]
    assert {p["name"] for p in doc["parties"]} == {"coordinator", "bank", "tax_bureau"}
    assert all(p["trusted"] is True and len(p["key_id"]) == 16 for p in doc["parties"])
    assert len(doc["exchanges"]) == 8 and {x["status"] for x in doc["exchanges"]} == {"paired"}
    assert doc["content_classes"]["ciphertext"] == {"messages": 3, "bytes": 271_000}
    assert doc["content_classes"]["plaintext"]["messages"] == 0
    assert doc["traffic"]["bank"]["1"] == {"sent": 90_000, "received": 4_000}

    text = result.html_path.read_text()
    checker = parse(text)
    assert checker.errors == [] and checker.stack == [], checker.errors
    assert "script" not in checker.tags
    body = " ".join(checker.text)
    for name in ("coordinator", "bank", "tax_bureau"):
        assert name in body
    for p in doc["parties"]:
        assert p["key_id"] in body
    assert "Verified" in body
    assert 'class="verdict ok"' in text
    # The chart is embedded, and the page references nothing outside itself.
    (src,) = checker.img_src
    assert src.startswith("data:image/png;base64,")
    png = base64.b64decode(src.split(",", 1)[1])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == result.png_path.read_bytes()
    assert not re.search(r"(https?:)?//[a-z0-9]", text.replace(src, ""), re.I)


def test_hostile_party_name_is_escaped(tmp_path: Path) -> None:
    paths, _ = build_run(tmp_path, party=HOSTILE)
    result = build_report(paths, tmp_path / "report")
    text = result.html_path.read_text()
    checker = parse(text)
    assert checker.errors == [] and checker.stack == []
    assert "script" not in checker.tags
    assert "<script" not in text.lower()
    assert "&lt;script&gt;" in text
    assert HOSTILE in " ".join(checker.text)  # shown verbatim as text
    doc = json.loads(result.json_path.read_text())
    assert HOSTILE in {p["name"] for p in doc["parties"]}


def test_failed_verification_is_red(tmp_path: Path) -> None:
    paths, keys = build_run(tmp_path, plaintext=True)
    bank = next(p for p in paths if p.name == "bank.sqlite")
    conn = sqlite3.connect(bank)
    for name in TRIGGERS:
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE entries SET size_bytes = size_bytes + 1 WHERE seq = 2")
    conn.commit()
    conn.close()
    result = build_report(paths, tmp_path / "report", trusted_keys=keys)
    assert not result.ok
    doc = json.loads(result.json_path.read_text())
    fields = {(Path(f["file"]).name, f["field"]) for f in doc["findings"]}
    assert ("bank.sqlite", "size_bytes") in fields
    assert ("bank.sqlite", "content_class") in fields  # the plaintext model
    text = result.html_path.read_text()
    assert 'class="verdict bad"' in text and "Verification FAILED" in text
    assert "plaintext crossed the party line coordinator -&gt; bank (violation)" in text
    assert parse(text).errors == []


def test_unreadable_ledger_is_reported(tmp_path: Path) -> None:
    paths, _ = build_run(tmp_path)
    result = build_report([*paths, tmp_path / "missing.sqlite"], tmp_path / "report")
    assert [f.field for f in result.findings] == ["file"]


def test_empty_run_still_renders(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "a.sqlite", "coordinator", Ed25519Signer.generate())
    led.close()
    result = build_report([led.path], tmp_path / "out")
    assert result.ok
    assert parse(result.html_path.read_text()).errors == []
