"""Every Flower message type fedrisk exchanges.

Flower's ClientApp dispatches on ``<category>.<action>`` with the category
one of ``train``, ``evaluate`` or ``query``; the ClientApp registers one relay
function per entry below, so a protocol adds its message types here.
"""

from __future__ import annotations

IDENTITY = "query.identity"
KEYGEN = "query.keygen"
KEYSHARE = "query.keyshare"
FEDAVG_SCALE = "query.fedavgscale"
FEDAVG_STATS = "query.fedavgstats"
FEDAVG_TRAIN = "train.fedavg"
FEDAVG_FINAL = "evaluate.fedavg"

MESSAGE_TYPES: tuple[str, ...] = (
    IDENTITY,
    KEYGEN,
    KEYSHARE,
    FEDAVG_SCALE,
    FEDAVG_STATS,
    FEDAVG_TRAIN,
    FEDAVG_FINAL,
)
