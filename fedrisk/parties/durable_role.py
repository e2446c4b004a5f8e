"""A party's protocol role whose state survives its process: written after every answer, restored on restart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedrisk.parties.alignment import FeatureHolderAlignment, LabelHolderAlignment

if TYPE_CHECKING:
    from fedrisk.parties.protocol import Party

__all__ = ["DurableRole"]


class DurableRole:
    """A protocol role that keeps its state on disk after every message (see :mod:`fedrisk.parties.vertical_lr_state`).

    Subclasses name their model's mutable fields in :attr:`FIELDS` and rebuild
    the model from the run's static part in :meth:`_rebuild`; the runtime calls
    :meth:`save_durable` before each answer leaves and :meth:`restore_durable`
    in a restarted party process (:class:`fedrisk.parties.protocol.DurableProtocol`).
    """

    FIELDS: tuple[str, ...] = ()
    runtime: Party
    model: Any

    def _durable(self, run_id: str):
        from fedrisk.parties.vertical_lr_state import DurableVerticalState

        self._durable_run = run_id
        return DurableVerticalState(self.runtime.state_dir, run_id, type(self).__name__)

    def save_durable(self, run_id: str, request_key: str, reply: bytes) -> None:
        """Called by the runtime after each answer, before it leaves: the model's fields and the answer (encoded, as it leaves)."""
        if self.model is None:
            return
        progress, values, blobs = self._capture()
        self._durable(run_id).save_state(progress, values, blobs, request_key, reply)

    def _capture(self) -> tuple[int, dict[str, Any], dict[str, bytes]]:
        """The model's mutable fields: (progress counter, JSON values, byte blobs)."""
        from fedrisk.parties.vertical_lr_state import capture

        values, blobs = capture(self.model, self.FIELDS)
        return int(getattr(self.model, "epoch_", 0)), values, blobs

    def _apply(self, values: dict[str, Any], state) -> None:
        """Put the fields :meth:`_capture` saved back on the freshly rebuilt model."""
        from fedrisk.parties.vertical_lr_state import apply

        apply(self.model, self.FIELDS, values, state)

    def restore_durable(self, run_id: str):
        """In a restarted party process: rebuild the run's model from disk; returns (request key, answer) to cache."""
        from fedrisk.parties.relay import decode_content
        from fedrisk.parties.vertical_lr_state import aligned_from

        loaded = self._durable(run_id).load()
        if loaded is None:
            return None
        static, state = loaded
        aligned = aligned_from(static)
        alignment = self.runtime.protocol(LabelHolderAlignment) or self.runtime.protocol(FeatureHolderAlignment)
        if isinstance(alignment, (LabelHolderAlignment, FeatureHolderAlignment)):
            alignment.aligned = aligned
        self._rebuild(static, aligned)
        if state is None:
            return None
        self._apply(dict(state.state["fields"]), state)
        self._after_restore()
        return str(state.state["request"]), decode_content(state.blob("reply"))

    def _rebuild(self, static, aligned) -> None:
        raise NotImplementedError

    def _after_restore(self) -> None:
        pass

    def discard_durable(self) -> None:
        """Delete the run's recovery state (the label holder's copy of its secret key with it)."""
        import shutil

        run_id = getattr(self, "_durable_run", None)
        if run_id is not None:
            shutil.rmtree(self._durable(run_id).static.folder.parent, ignore_errors=True)
