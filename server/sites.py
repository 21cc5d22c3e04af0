"""Who is in the federation: the coordinator's own record of each node, and what each says of its data.

A site's identity is never what the site says. In a deployment it is the name its key was
registered under (`flwr supernode register --name`, from authorized-sites.csv): the SuperLink
authenticated the key, so the name is the coordinator's. In simulation, where nodes carry no
registered names, it is the scenario's site for the node's partition. A site's role comes from
the scenario (a hospital folder outside it trains). A node whose description disagrees (another
name, another role, another partition's site) or cannot be read is rejected by name and takes no
part; the run goes on with the others. Only metadata crosses the wire (a name, a role, two
counts, the compute device)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from server.exchange import exchange
from server.replies import Rejected, SiteClaim, site_claim

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
        return {
            "node_id": self.node_id,
            "name": self.name,
            "role": self.role,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "device": self.device,
        }


@dataclass(frozen=True)
class Roster:
    """What the coordinator knows of the sites before any answers: the scenario's sites in
    partition order, as (name, role)."""

    partitions: Sequence[tuple[str, str]] = ()

    def role(self, name: str) -> str:
        """The scenario's role for `name`; a hospital folder the scenario does not list trains."""
        return next((role for site, role in self.partitions if site == name), "train")


@dataclass
class Discovery:
    sites: dict[int, SiteInfo] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # node's name (or node-ID) -> why it takes no part
    missing: dict[str, str] = field(default_factory=dict)  # the scenario's sites no node is -> their role


def missing_sites(roster: Roster, accepted: list[str], simulation: bool, nodes: int) -> tuple[dict[str, str], str]:
    """The scenario's sites that no accepted node is, and a warning that says what it costs and
    the fix ("" when none is missing)."""
    missing = {name: role for name, role in roster.partitions if name not in accepted}
    if not missing:
        return missing, ""
    names = ", ".join(f"{name} ({role})" for name, role in missing.items())
    warning = f"{len(missing)} of the scenario's {len(roster.partitions)} sites take no part: {names}"
    if simulation:
        warning += (
            f". The federation has {nodes} nodes; each simulated node is one site, by partition. With "
            f'`flwr run .`, give every site a node: --federation-config "num-supernodes={len(roster.partitions)}"'
        )
    else:
        warning += ": they did not connect or were rejected (see above)"
    heldout = [name for name, role in roster.partitions if role == "heldout"]
    if heldout and all(name in missing for name in heldout):
        warning += ". No held-out site takes part: this run reports no figure on a new site"
    return missing, warning


def registered_names(grid: Grid) -> dict[int, str]:
    """Node id -> the name its key was registered under ("" when none, as in simulation)."""
    return {int(node.node_id): str(node.name) for node in grid.get_nodes()}


def identify(node: int, claim: SiteClaim, registered: dict[int, str], roster: Roster, taken: dict[str, int]) -> str:
    """The site `node` is, by the coordinator's records; `Rejected` when its claim disagrees."""
    if any(registered.values()):  # a deployment: the registry decides
        name = registered.get(node, "")
        if not name:
            raise Rejected(
                "its key is registered without a name: register it with `flwr supernode register --name` "
                "(fedmeta coordinator does, from authorized-sites.csv)"
            )
        if claim.name != name:
            raise Rejected(f"it claims to be site {claim.name!r}, but its key is registered as {name!r}")
    else:  # simulation: the partition decides
        if claim.partition is None or not 0 <= claim.partition < len(roster.partitions):
            raise Rejected(
                f"it reports partition {claim.partition}, not one of the scenario's "
                f"{len(roster.partitions)} sites: set num-supernodes to the scenario's site count"
            )
        name = roster.partitions[claim.partition][0]
        if claim.name != name:
            raise Rejected(f"it claims to be site {claim.name!r}, but partition {claim.partition} is {name!r}")
    if name in taken:
        raise Rejected(f"node {taken[name]} is already site {name!r}")
    role = roster.role(name)
    if claim.role != role:
        raise Rejected(f"it reports role {claim.role!r}, but {name!r} is a {role!r} site")
    return name


SETTLE_S = 2.0  # how long the node count must hold still before the scenario's missing sites are given up


def _settled(grid: Grid, nodes: list[int], expected: int, deadline: float) -> list[int]:
    """Sites connecting together (a simulation registers its virtual nodes while the ServerApp
    starts) are not all there the moment `min-sites` is: while fewer nodes than the scenario's
    sites are connected, wait until the count holds still for SETTLE_S seconds."""
    still_since = time.monotonic()
    while len(nodes) < expected and time.monotonic() - still_since < SETTLE_S and time.monotonic() < deadline:
        time.sleep(0.25)
        now = sorted(grid.get_node_ids())
        if len(now) != len(nodes):
            nodes, still_since = now, time.monotonic()
    return nodes


def discover_sites(grid: Grid, min_sites: int, timeout: float, roster: Roster = Roster()) -> Discovery:
    """Wait for `min_sites` nodes, then ask each for its site description and check it."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < min_sites:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(nodes)} of min-sites={min_sites} sites connected within {timeout:.0f} s: check that the "
                "sites are running and can reach the coordinator, or lower min-sites"
            )
        log(INFO, "waiting for sites: %d connected, %d needed", len(nodes), min_sites)
        time.sleep(1)
    nodes = _settled(grid, nodes, len(roster.partitions), deadline)
    registered = registered_names(grid)
    label = {n: registered.get(n) or f"node-{n}" for n in nodes}
    query = RecordDict({"config": ConfigRecord({"query": "site-info"})})
    messages = [Message(content=query, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    found = Discovery()
    outcome = exchange(grid, messages, timeout=max(1.0, deadline - time.monotonic()))
    replies = outcome.replies
    for node, reason in outcome.failures.items():
        found.rejected[label[node]] = f"did not describe its site: {reason}"
        log(WARNING, "%s (node %s) did not describe its site and takes no part: %s", label[node], node, reason)
    taken: dict[str, int] = {}
    for node in sorted(replies):
        try:
            claim = site_claim(replies[node].content)
            name = identify(node, claim, registered, roster, taken)
        except Rejected as error:
            found.rejected[label[node]] = f"rejected: {error}"
            log(WARNING, "%s (node %s) is rejected and takes no part: %s", label[node], node, error)
            continue
        taken[name] = node
        found.sites[node] = SiteInfo(node, name, claim.role, claim.num_train, claim.num_test, claim.device)
    simulation = not any(registered.values())
    found.missing, warning = missing_sites(roster, [s.name for s in found.sites.values()], simulation, len(nodes))
    if warning:
        log(WARNING, "%s", warning)
    if not any(s.role == "train" for s in found.sites.values()):
        names = sorted(s.name for s in found.sites.values())
        raise RuntimeError(
            f"no training site among the accepted sites {names} (rejected: {found.rejected or 'none'}); "
            "at least one needs role 'train'"
        )
    for site in sorted(found.sites.values(), key=lambda s: s.name):
        log(
            INFO,
            "site %s (node %s): %s, %d train / %d test examples, computes on %s",
            site.name,
            site.node_id,
            site.role,
            site.num_train,
            site.num_test,
            site.device,
        )
    return found
