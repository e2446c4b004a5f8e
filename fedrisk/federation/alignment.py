"""The coordinator's side of entity alignment: relay ECDH-PSI, then the sealed training order.

The coordinator only relays (see :mod:`fedrisk.crypto.psi` for the protocol and
what each party learns, :mod:`fedrisk.parties.alignment` for the parties'
side). Four PSI exchanges, each with every party that has something to do::

    psi.blind         every party            → its blinded set              [masked]
    psi.double_blind  feature holder k       ← the label holder's set       [masked]
                      label holder           ← every feature holder's set   [masked]
    psi.intersect     label holder           ← every double-blinded set     [masked]
                                             → a sealed answer per party     [ciphertext]
    psi.finish        feature holder k       ← its sealed answer            [ciphertext]

then ``vertical.align``: the label holder seals each feature holder's row
positions in its private training order to that party's identity key, padded to
``min(|X|, |Y_k|)`` slots, and the coordinator hands each its envelope. What the
coordinator learns: the set sizes (from message sizes, which depend on nothing
else) and the number of training rows (``|X|``) — not the intersection nor its
size, which stay with the label holder (:func:`fedrisk.parties.alignment.read_alignment_report`)
and appear in no reply, log line, checkpoint or ``result.json`` of the coordinator.
Within one of the label holder's key epochs (:mod:`fedrisk.crypto.psi_cache`) the
coordinator relays the same blinded values for the label holder in every run (in a
fresh order), so it can link those runs and count how many of the label holder's IDs
were added or removed between them; nothing across epochs. The wire is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from fedrisk.crypto.envelope import public_key_id
from fedrisk.errors import ConfigError, ProtocolError
from fedrisk.protocols import alignment as spec
from fedrisk.protocols.step import Step
from fedrisk.wire.exchange import build_content
from fedrisk.federation.session import CoordinatorSession

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class _KeyedCoordinator(Protocol):
    fingerprint: str


_C = TypeVar("_C", bound=_KeyedCoordinator)


@dataclass(frozen=True)
class VerticalRoles:
    """Who is who in a vertical federation."""

    label_holder: str
    feature_holders: tuple[str, ...]

    @classmethod
    def of(cls, session: CoordinatorSession) -> "VerticalRoles":
        holders = sorted(n for n, p in session.parties.items() if p.role == "label_holder")
        features = tuple(sorted(n for n, p in session.parties.items() if p.role == "feature_holder"))
        if len(holders) != 1:
            raise ConfigError(f"a vertical federation needs exactly one label_holder, found {len(holders)}")
        if not features:
            raise ConfigError("a vertical federation needs at least one feature_holder")
        return cls(holders[0], features)

    def checkpoint_digest(self, protocol: str, config: DataclassInstance) -> str:
        """What a resumed run of ``protocol`` must share with the run it resumes: its config and these roles."""
        from dataclasses import asdict

        from fedrisk.checkpoint import config_digest

        return config_digest({"protocol": protocol, **asdict(config), "label_holder": self.label_holder, "feature_holders": list(self.feature_holders)})

    def coordinator(self, protocol: Callable[..., _C], public_context: object, announced: str) -> _C:
        """The coordinator's protocol object over the label holder's public context (no secret key),
        which must be the key the label holder announced (one line naming both otherwise)."""
        coordinator = protocol(public_context, label_holder=self.label_holder, feature_holders=self.feature_holders)
        if coordinator.fingerprint != announced:
            raise ProtocolError(f"label holder {self.label_holder!r} announced key {announced}, its public context is {coordinator.fingerprint}")
        return coordinator


def psi_session_fingerprint(key_ids) -> str:
    """One name for a PSI session: a hash of its parties' per-run key fingerprints."""
    import hashlib

    joined = "\n".join(sorted(str(k) for k in key_ids)).encode()
    return "psi:" + hashlib.sha256(b"fedrisk/psi-session\x00" + joined).hexdigest()[:16]


def run_alignment(session: CoordinatorSession, roles: VerticalRoles) -> int:
    """Run PSI and the sealed training order; returns the number of training-order rows."""
    lh, fhs = roles.label_holder, roles.feature_holders

    key = "-"

    def request(party: str, step: Step, content_class: str | None = None, blobs=None, config=None, fingerprint=None):
        header = session.header(0, step.request, party, content_class or step.request_class, fingerprint or key)
        return step.message_type, build_content(header, blobs, config)

    blinded = session.exchange({p: request(p, spec.BLIND) for p in (lh, *fhs)})
    sets = {p: reply.blob("blinded") for p, reply in blinded.items()}
    # Later PSI payloads are made under every party's per-run key: name the session by all of them.
    key = psi_session_fingerprint(reply.header.key_fingerprint for reply in blinded.values())

    doubles = session.exchange(
        {
            lh: request(lh, spec.DOUBLE_BLIND, blobs={f"blinded:{p}": sets[p] for p in fhs}),
            **{p: request(p, spec.DOUBLE_BLIND, blobs={"blinded": sets[lh]}) for p in fhs},
        }
    )
    answers = session.exchange({lh: request(lh, spec.INTERSECT, blobs={f"double:{p}": doubles[p].blob("double") for p in fhs})})[lh]
    session.exchange({p: request(p, spec.FINISH, blobs={"result": answers.blob(f"result:{p}")}) for p in fhs})

    envelope_keys = {p: session.parties[p].envelope_public_key for p in fhs}
    positions = session.exchange(
        {lh: request(lh, spec.ALIGN, "public", config={"peer_names": list(envelope_keys), "peer_keys": list(envelope_keys.values())})}
    )[lh]
    rows = int(positions.value("rows"))  # type: ignore[call-overload]
    if rows <= 0:
        raise ProtocolError(f"label holder {lh!r} has no rows to train on")
    lh_key = session.parties[lh].envelope_public_key
    session.exchange(
        {
            p: request(
                p,
                spec.ALIGN,
                "ciphertext",
                blobs={"positions": positions.blob(f"positions:{p}")},
                config={"rows": rows, "label_holder_public_key": lh_key},
                fingerprint=public_key_id(bytes.fromhex(session.parties[p].envelope_public_key)),  # sealed to p
            )
            for p in fhs
        }
    )
    return rows
