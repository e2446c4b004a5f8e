"""The sandboxed scoring node: live credit decisions from the jointly trained model.

The bank's node (:mod:`.scoring_node`) serves ``fedrisk.v1.ScoringService``; for each
application it asks every feature holder's party scoring service
(:mod:`.party_service`, ``fedrisk.v1.PartyScoringService``, at that party, on
its own table) for its part of the score — a partial log-odds for the vertical
scorecard, the direction at each of its splits for vertical SecureBoost —
combines the parts exactly as training did, applies the credit policy and
records the application. A stacked model is served as one (:mod:`.stack`): each
party is asked once per application for its part of every base learner, and
the meta-learner runs at the bank. Each runs
in its own sandbox, started by a launcher that opens only the configured doors.

Modules, one concept each:

``policy``         the credit policy (TOML): PD bands, differentiated limits, hard maximum, missing parties
``validation``     precise checks of every request (INVALID_ARGUMENT)
``bundles``        verified model bundles (Ed25519, trusted keys) and the fast per-application scorer
``trees``          the bank's SecureBoost trees routed per application with the parties' answers, and their reasons
``stack``          a stacked model at the bank: base learners combined as when served alone, the meta-learner on their log-odds
``tables``         a party's own table indexed by SME ID
``fanout``         the bank's coalescing, deadline-bound, circuit-broken calls to the parties
``node``           the bank's scoring node
``party_service``  a feature holder's party scoring service (mTLS, allow-list)
``register``       the append-only, hash-chained application register (SQLite)
``transport``      gRPC TLS/mTLS credentials, channels and deliberate message limits
``revocation``     the federation CA's CRL enforced on every scoring link (accepting and calling), pinned party links
``config``         JSON-serialisable configurations of a node and a party service
``limits``         resource limits and no_new_privs a sandboxed process applies to itself
``sandbox``        which isolation is available (bubblewrap, namespaces; fails closed) and how to invoke it
``namespaces``     the fallback sandbox trampoline (user/net/mount/PID namespaces, a minimal root, without bubblewrap)
``forward``        the byte forwarders that are a sandbox's only doors
``launcher``       starts a node or party service in its sandbox and opens its doors
``main``           the process entry inside the sandbox
``deploy``         starts nodes and party services as processes (demo, tests, benchmarks)
``client``         a blocking client of the scoring node
``portfolio``      batch pre-approval and early-warning watch jobs
``example``        a small trained federation on disk, for examples, tests and benchmarks
"""
