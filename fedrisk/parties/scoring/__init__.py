"""The sandboxed scoring node: live credit decisions from the jointly trained model.

Modules, one concept each:

``policy``         the credit policy (TOML): PD bands, limits, what a missing party means
``validation``     precise checks of every request (INVALID_ARGUMENT)
``bundles``        verified model bundles and the fast per-application scorer
``tables``         a party's own table indexed by SME ID
``fanout``         the bank's coalescing, deadline-bound calls to the parties
``node``           the bank's scoring node (``fedrisk.v1.ScoringService``)
``party_service``  a feature holder's ``fedrisk.v1.PartyScoringService``
``register``       the append-only application register (SQLite)
``sandbox``        bubblewrap / namespaces / rlimits isolation and the launcher
``forward``        the byte forwarders that are the sandbox's only doors
``deploy``         start nodes and party services as processes (demo, tests)
``client``         a client of the scoring node
``portfolio``      batch pre-approval and early-warning watch jobs
"""
