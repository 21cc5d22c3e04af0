"""Who is in the federation: ask every connected node for its site's name, role and data counts.

Only metadata crosses the wire (a name, a role, two counts); the coordinator uses it to train on
training sites only and to meta-test on held-out sites."""

from __future__ import annotations

import time
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

SITE_RECORD = "site"


@dataclass(frozen=True)
class SiteInfo:
    node_id: int
    name: str
    role: str
    num_train: int
    num_test: int
    device: str = "unknown"  # where the site computes (cpu, cuda:0), as it reports it

    def as_dict(self) -> dict[str, object]:
        return {"node_id": self.node_id, "name": self.name, "role": self.role, "num_train": self.num_train,
                "num_test": self.num_test, "device": self.device}


def answered(messages: list[Message], replies: list[Message]) -> dict[str, int]:
    """Message id -> the node it was sent to, for the messages a grid has sent (it stamps the ids).
    Errors made by the SuperLink (e.g. "Node Unavailable") come from the SuperLink's own node id
    and name the node they stand for only through `reply_to_message_id`."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}


def source(reply: Message, sent: dict[str, int]) -> int:
    """The node a reply answers for."""
    return sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def exchange(grid: Grid, messages: list[Message], timeout: float) -> tuple[dict[int, Message], dict[int, str]]:
    """Send and wait: the good replies by node, and for every other addressed node why not."""
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    sent = answered(messages, replies)
    ok, failed = {}, {}
    for reply in replies:
        node = source(reply, sent)
        if reply.has_error():
            failed[node] = reply.error.reason
        else:
            ok[node] = reply
    for message in messages:
        node = message.metadata.dst_node_id
        if node not in ok and node not in failed:
            failed[node] = f"no reply within {timeout:.0f} s ({message.metadata.message_type})"
    return ok, failed


def discover_sites(grid: Grid, min_sites: int, timeout: float) -> dict[int, SiteInfo]:
    """Wait for `min_sites` nodes, then query each for its site description."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < min_sites:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(nodes)} of min-sites={min_sites} sites connected within {timeout:.0f} s: check that the "
                "sites are running and can reach the coordinator, or lower min-sites"
            )
        log(INFO, "waiting for sites: %d connected, %d needed", len(nodes), min_sites)
        time.sleep(1)
    query = RecordDict({"config": ConfigRecord({"query": "site-info"})})
    messages = [Message(content=query, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    sites: dict[int, SiteInfo] = {}
    replies, failed = exchange(grid, messages, timeout=max(1.0, deadline - time.monotonic()))
    for node, reason in failed.items():
        log(WARNING, "node %s did not describe its site and takes no part: %s", node, reason)
    for node, reply in replies.items():
        info = reply.content[SITE_RECORD]
        sites[node] = SiteInfo(node, str(info["site-name"]), str(info["role"]), int(info["num-train"]), int(info["num-test"]),
                               str(info.get("device", "unknown")))
    names = [s.name for s in sites.values()]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two nodes claim the same site name: {sorted(names)}; give each site its own site-name")
    if not any(s.role == "train" for s in sites.values()):
        raise RuntimeError(f"no training site among the connected sites {names}; at least one needs role 'train'")
    for site in sorted(sites.values(), key=lambda s: s.name):
        log(INFO, "site %s (node %s): %s, %d train / %d test examples, computes on %s", site.name, site.node_id, site.role,
            site.num_train, site.num_test, site.device)
    return sites
