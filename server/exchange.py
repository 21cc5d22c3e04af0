"""Who replied, and why the others did not: one message exchange with a set of nodes.

A reply is attributed to the node it answers for: its sender, or, for errors the SuperLink makes
on a node's behalf ("Node Unavailable"), the node the answered message was sent to. A node that
sent an error gets the error's own message, without the Ray or Flower traceback around it; a node
that sent nothing within the timeout is named as silent. What a good reply holds is checked by
its reader (`server.replies`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid


def clean_reason(reason: str) -> str:
    """The site's own error message, without the Ray/Flower traceback wrapped around it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    head, _, tail = text.rpartition("Message: ")
    lines = text.strip().splitlines()
    return (tail if head else lines[-1] if lines else text).strip().removesuffix("'>").strip()


@dataclass
class Outcome:
    replies: dict[int, Message] = field(default_factory=dict)  # node -> its good reply
    failures: dict[int, str] = field(default_factory=dict)  # node -> why it has none

    @classmethod
    def of(cls, replies: Iterable[Message], sent: Iterable[Message] = (), timeout: float | None = None) -> Outcome:
        """The outcome of `replies` to the messages `sent` (stamped with ids by the grid)."""
        sent = list(sent)
        to = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
        out = cls()
        for reply in replies:
            node = to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                out.failures[node] = clean_reason(reply.error.reason or "")
            else:
                out.replies[node] = reply
        for message in sent:
            node = message.metadata.dst_node_id
            if node not in out.replies and node not in out.failures:
                wait = f" within {timeout:.0f} s" if timeout is not None else ""
                out.failures[node] = f"no reply{wait} ({message.metadata.message_type})"
        return out


def exchange(grid: Grid, messages: list[Message], timeout: float) -> Outcome:
    """Send `messages` and wait up to `timeout` seconds for the replies."""
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    return Outcome.of(replies, messages, timeout)
