"""The spec of entity alignment: ECDH-PSI, then the label holder's sealed training order.

The coordinator's role is :mod:`fedrisk.federation.alignment` (it only
relays), the parties' :mod:`fedrisk.parties.alignment`; the PSI itself is
:mod:`fedrisk.crypto.psi`. Alignment has no parameters of its own in the run
config (the label holder's key-epoch policy is a party setting,
:class:`fedrisk.crypto.psi_cache.KeyEpochPolicy`), so there is no config class.
"""

from __future__ import annotations

from fedrisk.protocols.step import Step
from fedrisk.wire import message_types as mt

#: Every party blinds its own ID set under a fresh (feature holder) or epoch (label holder) key.
BLIND = Step(mt.PSI_BLIND, "psi.blind", "psi.blinded_set", ("public",), ("masked",))
#: Each feature holder blinds the label holder's set again; the label holder every feature holder's.
DOUBLE_BLIND = Step(
    mt.PSI_DOUBLE_BLIND,
    "psi.double_blind",
    "psi.double_blinded",
    ("masked",),
    ("masked", "public"),
    varies="reply by role: a feature holder returns the double-blinded set (masked); the label holder keeps its results and acknowledges (public)",
)
#: The label holder intersects and answers each feature holder, sealed under a key both ends derive from the PSI session.
INTERSECT = Step(mt.PSI_INTERSECT, "psi.intersect", "psi.result", ("masked",), ("ciphertext",))
#: Each feature holder opens its answer and acknowledges.
FINISH = Step(mt.PSI_FINISH, "psi.finish", "psi.finished", ("ciphertext",), ("public",))
#: The label holder seals each feature holder's row positions in its private training order; each feature holder opens its own.
ALIGN = Step(
    mt.VERTICAL_ALIGN,
    "vertical.align",
    "vertical.positions",
    ("public", "ciphertext"),
    ("ciphertext", "public"),
    varies=(
        "by role: to the label holder the peers' public keys (public), which replies with the sealed positions "
        "(ciphertext, vertical.positions); to a feature holder its sealed positions (ciphertext), which acknowledges "
        "(public, vertical.aligned)"
    ),
    other_reply="vertical.aligned",
)

STEPS: tuple[Step, ...] = (BLIND, DOUBLE_BLIND, INTERSECT, FINISH, ALIGN)
