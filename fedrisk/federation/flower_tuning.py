"""Flower 1.39 knobs that fedrisk sets for protocols with many small round trips.

A Flower message travels as a tree of objects. A receiver that is told of a
message before all its objects have arrived (the ClientApp as soon as its
SuperNode has the message, the ServerApp as soon as the SuperLink has the
reply) retries each missing object with exponential backoff starting at
**1 s** (``flwr.supercore.constant.PULL_INITIAL_BACKOFF``, doubling up to 10 s).
Objects usually arrive a few milliseconds later, so nearly every message paid
1–3 s of sleep: measured here, ``pull_task_input`` took 3.1 s for a message
whose ClientApp then ran for 20 ms. fedrisk retries after 10 ms, doubling up
to 250 ms, still bounded by Flower's own overall deadline (``PULL_MAX_TIME``).

:func:`shorten_object_pull_backoff` changes the defaults of Flower's pull
functions in the calling process. It is called where fedrisk's code runs in a
Flower process that pulls: the SuperNode (:mod:`fedrisk.parties.supernode`)
and the ServerApp (:mod:`fedrisk.federation.server_app`, imported by
``flwr-serverapp`` before the run starts).
"""

from __future__ import annotations

INITIAL_BACKOFF_SECONDS = 0.01
BACKOFF_CAP_SECONDS = 0.25


def shorten_object_pull_backoff() -> None:
    """Retry a not-yet-arrived object after 10 ms instead of 1 s (idempotent)."""
    from flwr.supercore.inflatable import inflatable_utils

    for function in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__
        if defaults is None or "initial_backoff" not in defaults:
            continue  # a Flower version without these knobs: leave it alone
        defaults["initial_backoff"] = INITIAL_BACKOFF_SECONDS
        defaults["backoff_cap"] = BACKOFF_CAP_SECONDS
        # Shorter sleeps mean more tries per object; Flower's max_time still bounds the wait.
        defaults["max_tries_per_object"] = None
