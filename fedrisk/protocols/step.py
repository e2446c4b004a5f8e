"""A protocol step: the coordinator's request to a party and the party's reply, as the wire names them.

The names are wire format: they travel in every message's
:class:`~fedrisk.wire.exchange.ExchangeHeader` and end up in the signed
ledgers, so a spec moves them into one place and never renames them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrisk.errors import ProtocolError


@dataclass(frozen=True)
class Step:
    """One exchange of a protocol.

    Attributes
    ----------
    message_type : str
        The Flower message type of the request (:mod:`fedrisk.wire.message_types`);
        the party's runtime dispatches on it to the role's handler.
    request : str
        The step name of the coordinator's request (and of its status while it waits).
    reply : str
        The step name of the party's reply.
    request_classes, reply_classes : tuple of str
        The content classes (:data:`fedrisk.wire.exchange.CONTENT_CLASSES`) each
        side may declare. One class: fixed, read it as :attr:`request_class` /
        :attr:`reply_class`. Several: the sender picks one at run time, as
        :attr:`varies` says.
    varies : str
        What picks the class (and the reply name, with :attr:`other_reply`) where
        a side has more than one.
    other_reply : str
        The step name some replies carry instead of :attr:`reply` (``varies`` says
        which), or ``""``.
    """

    message_type: str
    request: str
    reply: str
    request_classes: tuple[str, ...]
    reply_classes: tuple[str, ...]
    varies: str = ""
    other_reply: str = ""

    @property
    def request_class(self) -> str:
        """The request's content class, where it is fixed."""
        return self._only(self.request_classes, "request")

    @property
    def reply_class(self) -> str:
        """The reply's content class, where it is fixed."""
        return self._only(self.reply_classes, "reply")

    @property
    def replies(self) -> tuple[str, ...]:
        """Every step name a reply to this request may carry."""
        return (self.reply, self.other_reply) if self.other_reply else (self.reply,)

    def _only(self, classes: tuple[str, ...], side: str) -> str:
        if len(classes) != 1:
            raise ProtocolError(f"step {self.request!r}: its {side} class is picked at run time among {', '.join(classes)} ({self.varies})")
        return classes[0]
