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

:func:`use_bundled_runtime_calls` makes the ServerApp's Grid push and pull each
message with its objects in one request against fedrisk's SuperLink
(:mod:`fedrisk.federation.superlink`), where a pull also waits for the replies
(long poll); against any other SuperLink it keeps Flower's calls. With it, a
reply's objects have all arrived when the reply is handed out, so the
backoff above only matters against another SuperLink.
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


#: How long one of the ServerApp's pulls may wait at a fedrisk SuperLink for the replies it asks for.
REPLY_WAIT_SECONDS = 0.5


def use_bundled_runtime_calls() -> bool:
    """The ServerApp's Grid pushes and pulls each message with its objects in one request (idempotent).

    ``flwr-serverapp`` talks to the SuperLink through Flower's ``HttpGrid``:
    ``push_messages`` was one ``push-messages`` request plus one ``push-object``
    per object, ``pull_messages`` one ``pull-messages`` plus, per reply, one
    ``pull-object`` per object and a ``confirm-message-received``. Against
    fedrisk's SuperLink (:mod:`fedrisk.federation.superlink`) they become one
    request each (:mod:`fedrisk.wire.bundles`), and a pull waits there, up
    to :data:`REPLY_WAIT_SECONDS`, until the replies it asks for are complete.
    Objects a bundle does not carry (too large, or not yet uploaded) are pushed
    or pulled one by one as Flower does; a SuperLink without the extension
    answers 404 and this Grid uses Flower's own methods from then on.
    Returns whether the Grid was patched (``False``: another Flower).
    """
    try:
        from flwr.superlink.grid import http_grid
    except ImportError:  # pragma: no cover - another Flower
        return False
    grid_class = getattr(http_grid, "HttpGrid", None)
    needed = ("_try_push_messages", "pull_messages", "_runtime_client")
    if grid_class is None or not all(hasattr(grid_class, name) for name in needed):
        return False
    if getattr(grid_class.pull_messages, "_fedrisk", False):
        return True
    import httpx

    from fedrisk.wire.bundles import (
        RUNTIME_PULL,
        RUNTIME_PUSH,
        Bundle,
        gather_objects,
    )

    flower_push, flower_pull = grid_class._try_push_messages, grid_class.pull_messages
    offered = {"bundles": True}

    def unsupported(err: Exception) -> bool:
        if isinstance(err, httpx.HTTPStatusError) and err.response.status_code in (404, 405):
            offered["bundles"] = False
            return True
        return False

    def call(grid, path: str, bundle: Bundle) -> Bundle:
        return grid._runtime_client._unary_unary(path=path, rpc_method=path, request=bundle, response_type=Bundle)

    def _try_push_messages(self, run_id: int, messages):
        if not offered["bundles"]:
            return flower_push(self, run_id, messages)
        messages = list(messages)
        proto_messages, trees, objects = [], [], {}
        for msg in messages:
            proto_messages.append(http_grid.message_to_proto(http_grid.remove_content_from_message(msg)))
            objects.update(http_grid.get_all_nested_objects(msg))
            trees.append(http_grid.get_object_tree(msg))
        contents: dict[str, bytes] = {}

        def content_of(object_id: str) -> bytes:
            contents[object_id] = objects[object_id].deflate()
            return contents[object_id]

        carried, _ = gather_objects(list(objects), content_of)
        request = http_grid.PushAppMessagesRequest(messages_list=proto_messages, message_object_trees=trees)
        try:
            answer = call(self, RUNTIME_PUSH, Bundle(request.SerializeToString(), {}, carried))
        except httpx.HTTPStatusError as err:
            if unsupported(err):
                return flower_push(self, run_id, messages)
            raise
        response = http_grid.PushAppMessagesResponse.FromString(answer.head)
        if response.objects_to_push:  # too large for the bundle: one by one, as Flower does
            http_grid.push_objects(
                objects,
                push_object_fn=http_grid.make_push_object_fn_protobuf(
                    push_object_protobuf=self._runtime_client.PushObject,
                    node=self.node,
                    run_id=run_id,
                    session_id=response.session_id,
                ),
                object_ids_to_push=set(response.objects_to_push),
            )
        return list(response.message_ids)

    def pull_messages(self, message_ids):
        if not offered["bundles"]:
            return flower_pull(self, message_ids)
        message_ids = list(message_ids)
        run_id = self._run.run_id
        request = http_grid.PullAppMessagesRequest(message_ids=message_ids)
        try:
            answer = call(self, RUNTIME_PULL, Bundle(request.SerializeToString(), {"wait": REPLY_WAIT_SECONDS}))
        except httpx.HTTPStatusError as err:
            if unsupported(err):
                return flower_pull(self, message_ids)
            if err.response.status_code == httpx.codes.REQUEST_ENTITY_TOO_LARGE:
                http_grid.log(http_grid.ERROR, http_grid.ERROR_MESSAGE_PULL_MESSAGES_PAYLOAD_TOO_LARGE)
                return []
            raise
        response = http_grid.PullAppMessagesResponse.FromString(answer.head)
        carried = dict(answer.objects)
        confirmed = set(answer.meta.get("confirmed", ()))
        out = []
        for msg_proto, tree in zip(response.messages_list, response.message_object_trees, strict=True):
            msg_id = msg_proto.metadata.message_id
            ids = [t.object_id for t in http_grid.iterate_object_tree(tree)]
            contents = {i: carried[i] for i in ids if i in carried}
            missing = [i for i in dict.fromkeys(ids) if i not in contents]
            try:
                if missing:  # not in the bundle: one by one, as Flower does
                    contents.update(
                        http_grid.pull_objects(
                            missing,
                            pull_object_fn=http_grid.make_pull_object_fn_protobuf(
                                pull_object_protobuf=self._runtime_client.PullObject,
                                node=self.node,
                                run_id=run_id,
                            ),
                        )
                    )
            except http_grid.ObjectPullError as err:
                out.append(_unavailable_reply(http_grid, self.node.node_id, run_id, msg_proto.metadata.reply_to_message_id, err))
                continue
            if msg_id not in confirmed:
                self._runtime_client.ConfirmMessageReceived(http_grid.ConfirmMessageReceivedRequest(node=self.node, run_id=run_id, message_object_id=msg_id))
            message = http_grid.inflate_object_from_contents(msg_id, contents)
            message.metadata.__dict__["_message_id"] = msg_id
            out.append(message)
        return out

    _try_push_messages._fedrisk = True  # type: ignore[attr-defined]
    pull_messages._fedrisk = True  # type: ignore[attr-defined]
    grid_class._try_push_messages = _try_push_messages
    grid_class.pull_messages = pull_messages
    return True


def _unavailable_reply(http_grid, node_id: int, run_id: int, reply_to: str, err: Exception):
    """The error reply Flower's ``HttpGrid.pull_messages`` returns when a reply's objects cannot be pulled."""
    return http_grid.make_message(
        metadata=http_grid.Metadata(
            run_id=run_id,
            message_id="",
            src_node_id=node_id,
            dst_node_id=node_id,
            message_type=http_grid.SYSTEM_MESSAGE_TYPE,
            group_id="",
            ttl=0,
            reply_to_message_id=reply_to,
            created_at=http_grid.now().timestamp(),
        ),
        error=http_grid.Error(
            code=http_grid.ErrorCode.MESSAGE_UNAVAILABLE,
            reason=(f"Reply message objects are unavailable. The sender may not have completed the upload before the object-push session expired. {err}"),
        ),
    )
