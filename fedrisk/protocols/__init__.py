"""One spec per protocol: its steps and its configuration, shared by the coordinator, the parties and the estimator.

Each module (``fedavg``, ``alignment``, ``vertical_lr``, ``secureboost``) holds
the protocol's :class:`~fedrisk.protocols.step.Step` constants — message type,
the request's and the reply's step names, their content classes — gathered in
its ``STEPS``, and, where the protocol has parameters, its config dataclass with
the defaults and ``from_run_config``. The coordinator role
(:mod:`fedrisk.federation`) sends ``step.request`` under ``step.message_type``;
the party role (:mod:`fedrisk.parties`) answers with ``step.reply``. Nothing
here does I/O; this package imports only :mod:`fedrisk.errors`,
:mod:`fedrisk.wire` and :mod:`fedrisk.models`.
"""
