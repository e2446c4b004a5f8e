"""Every Flower message type fedrisk exchanges.

Flower's ClientApp dispatches on ``<category>.<action>`` with the category
one of ``train``, ``evaluate`` or ``query``; the ClientApp registers one relay
function per entry below, so a protocol adds its message types here, and each
one as a step of its spec (:mod:`fedrisk.protocols`), which names what the
request and the reply carry.
"""

from __future__ import annotations

IDENTITY = "query.identity"

# Horizontal FedAvg (several banks).
KEYGEN = "query.keygen"
KEYSHARE = "query.keyshare"
FEDAVG_SCALE = "query.fedavgscale"
FEDAVG_STATS = "query.fedavgstats"
FEDAVG_TRAIN = "train.fedavg"
FEDAVG_FINAL = "evaluate.fedavg"

# Entity alignment (ECDH-PSI), label holder and feature holders.
PSI_BLIND = "query.psiblind"
PSI_DOUBLE_BLIND = "query.psidoubleblind"
PSI_INTERSECT = "query.psiintersect"
PSI_FINISH = "query.psifinish"

# The label holder's private training order, sealed to each feature holder.
VERTICAL_ALIGN = "query.verticalalign"

# Vertical logistic regression: setup, then one round of messages per epoch.
VLR_SETUP = "query.vlrsetup"
VLR_JOIN = "query.vlrjoin"
VLR_SCORES = "train.vlrscores"
VLR_RESIDUAL = "train.vlrresidual"
VLR_GRADIENT = "train.vlrgradient"
VLR_DECRYPT = "train.vlrdecrypt"
VLR_FINISH = "evaluate.vlrfinish"

# Vertical SecureBoost: setup, then rounds of (feature holders, label holder).
SB_SETUP = "query.sbsetup"
SB_JOIN = "query.sbjoin"
SB_ROUND = "train.sbround"
SB_BANK_ROUND = "train.sbbank"

MESSAGE_TYPES: tuple[str, ...] = (
    IDENTITY,
    KEYGEN,
    KEYSHARE,
    FEDAVG_SCALE,
    FEDAVG_STATS,
    FEDAVG_TRAIN,
    FEDAVG_FINAL,
    PSI_BLIND,
    PSI_DOUBLE_BLIND,
    PSI_INTERSECT,
    PSI_FINISH,
    VERTICAL_ALIGN,
    VLR_SETUP,
    VLR_JOIN,
    VLR_SCORES,
    VLR_RESIDUAL,
    VLR_GRADIENT,
    VLR_DECRYPT,
    VLR_FINISH,
    SB_SETUP,
    SB_JOIN,
    SB_ROUND,
    SB_BANK_ROUND,
)
