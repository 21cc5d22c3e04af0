"""Secure aggregation of meta-gradients over Flower messages (the protocol is `common.secagg`).

One training round becomes four message exchanges with the sampled sites:

    train.secagg         global meta-parameters out; two public keys and scalar metrics back
    query.secagg_share   everyone's public keys out; encrypted key shares for each peer back
    query.secagg_mask    the shares addressed to the site out; its masked, quantized vector back
    query.secagg_unmask  who survived, who dropped; the shares needed to remove the masks back

Each site's vector is its meta-gradient times w / weight-scale, followed by w / weight-scale,
where w is its task count (1 under differential privacy). The coordinator recovers only the
sum, and from it the task-weighted mean. It never holds a single site's meta-gradient, so
per-site checks (norm bounds, robust rules) cannot apply. A site that fails in stage 1 or 2
is left out of the round. A site that drops after stage 2 is recovered from the others' shares,
as long as `threshold` of them answer the unmask request. The model: a coordinator that
follows the protocol but is curious (honest-but-curious). The consistency-check round that
defends against a coordinator lying about dropouts is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.typing import ConfigRecordValues
from flwr.serverapp import Grid

from common import secagg
from common.secagg import SecAggError
from server.exchange import exchange
from server.replies import Rejected, secagg_keys, secagg_masked, secagg_shares, secagg_unmask

T = TypeVar("T")

STAGES = ("train.secagg", "query.secagg_share", "query.secagg_mask", "query.secagg_unmask")


@dataclass(frozen=True)
class SecureAggregation:
    threshold_fraction: float = 0.6  # of the sampled sites, at least 2
    clip_range: float = 1024.0  # |w/W * meta-gradient| per coordinate beyond this is clipped (and counted)
    levels: int = 1 << 40  # quantization levels over [-clip_range, clip_range]: steps of 2e-9 at the default range
    weight_scale: float = 1.0  # W: the largest task count a site can report (tasks-per-round)

    def threshold(self, sampled: int) -> int:
        return min(sampled, max(2, math.ceil(self.threshold_fraction * sampled)))


@dataclass
class SecureRound:
    """What one secure round produced: the sum (or None), per-site metrics, errors, bytes."""

    total: np.ndarray | None = None
    survivors: int = 0
    metrics: dict[int, dict] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    bytes_up: int = 0


def _send(
    grid: Grid, kind: str, contents: dict[int, RecordDict], timeout: float
) -> tuple[dict[int, Message], dict[int, str]]:
    outcome = exchange(
        grid,
        [Message(content=content, message_type=kind, dst_node_id=node) for node, content in contents.items()],
        timeout,
    )
    return outcome.replies, outcome.failures


def secure_round(
    grid: Grid,
    nodes: list[int],
    arrays: ArrayRecord,
    config: ConfigRecord,
    spec: SecureAggregation,
    timeout: float,
    tasks_per_round: int = 2**31,
) -> SecureRound:
    """Run the four stages with `nodes`. Every reply is read through `server.replies`: a site
    whose reply is malformed leaves the round at that stage, as if it had dropped."""
    out = SecureRound()
    index = {node: k + 1 for k, node in enumerate(nodes)}
    threshold = spec.threshold(len(nodes))
    length = sum(math.prod(array.shape) for array in arrays.values()) + 1  # the vector and its weight
    base: dict[str, ConfigRecordValues] = dict(config) | {
        "secagg-threshold": threshold,
        "secagg-clip-range": spec.clip_range,
        "secagg-levels": spec.levels,
        "secagg-weight-scale": spec.weight_scale,
    }

    def read(
        stage: str, replies: dict[int, Message], failed: dict[int, str], reader: Callable[[RecordDict], T]
    ) -> dict[int, T]:
        for node, text in failed.items():
            out.errors.setdefault(node, f"{stage}: {text}")
        good = {}
        for node, reply in replies.items():
            try:
                good[node] = reader(reply.content)
            except Rejected as error:
                out.errors.setdefault(node, f"{stage}: rejected: {error}")
        return good

    # 1. meta-gradients computed and kept at the sites; public keys out
    advertised = read(
        "training",
        *_send(
            grid,
            STAGES[0],
            {
                n: RecordDict({"arrays": arrays, "config": ConfigRecord(base | {"secagg-index": index[n]})})
                for n in nodes
            },
            timeout,
        ),
        lambda c: secagg_keys(c, tasks_per_round),
    )
    keys = {index[n]: (c_pk, s_pk) for n, (c_pk, s_pk, _) in advertised.items()}
    out.metrics = {n: metrics for n, (_, _, metrics) in advertised.items()}
    if len(keys) < threshold:
        out.errors.setdefault(-1, f"{len(keys)} sites advertised keys, fewer than the threshold {threshold}")
        return out
    order = sorted(keys)
    listing: dict[str, ConfigRecordValues] = {
        "secagg-indices": order,
        "secagg-c-pks": [keys[i][0] for i in order],
        "secagg-s-pks": [keys[i][1] for i in order],
    }
    # 2. encrypted shares, routed by the coordinator, who cannot read them
    shares = read(
        "key sharing",
        *_send(
            grid,
            STAGES[1],
            {n: RecordDict({"config": ConfigRecord(base | listing | {"secagg-index": index[n]})}) for n in advertised},
            timeout,
        ),
        lambda c: secagg_shares(c, set(keys)),
    )
    inbox: dict[int, dict[int, bytes]] = {index[n]: {} for n in shares}
    for n, blobs in shares.items():
        for to, blob in blobs.items():
            if to in inbox:
                inbox[to][index[n]] = blob
    shared = {index[n]: keys[index[n]] for n in shares}
    if len(shared) < threshold:
        out.errors.setdefault(-1, f"{len(shared)} sites shared their keys, fewer than the threshold {threshold}")
        return out
    # 3. masked vectors (the only arrays that leave a site)
    contents = {
        n: RecordDict(
            {
                "config": ConfigRecord(
                    base | {"secagg-from": list(inbox[index[n]]), "secagg-blobs": list(inbox[index[n]].values())}
                )
            }
        )
        for n in shares
    }
    masked_replies = read("masking", *_send(grid, STAGES[2], contents, timeout), lambda c: secagg_masked(c, length))
    masked = {index[n]: array.numpy().astype(np.uint64) for n, (array, _) in masked_replies.items()}
    for n, (_, count) in masked_replies.items():
        if count:
            out.errors.setdefault(
                n, f"{count} coordinates beyond secagg-clip-range={spec.clip_range} were clipped: raise it"
            )
    out.bytes_up = sum(len(array.data) for array, _ in masked_replies.values())
    survivors, dropped = sorted(masked), sorted(set(shared) - set(masked))
    # 4. the shares that remove the masks: each survivor's self mask, each dropped site's pair masks
    responses = read(
        "unmasking",
        *_send(
            grid,
            STAGES[3],
            {
                n: RecordDict(
                    {"config": ConfigRecord(base | {"secagg-survivors": survivors, "secagg-dropped": dropped})}
                )
                for n in masked_replies
            },
            timeout,
        ),
        lambda c: secagg_unmask(c, set(shared)),
    )
    try:
        out.total = secagg.unmasked_sum(
            masked, shared, {index[n]: r for n, r in responses.items()}, threshold, spec.clip_range, spec.levels
        )
        out.survivors = len(survivors)
    except SecAggError as error:
        out.errors.setdefault(-1, str(error))
    return out


def unflatten(total: np.ndarray, template: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
    """The summed vector back into named arrays, and the summed weight (its last entry)."""
    out, offset = {}, 0
    for name, ref in template.items():
        out[name] = torch.from_numpy(total[offset : offset + ref.numel()].copy()).reshape(ref.shape)
        offset += ref.numel()
    if offset + 1 != len(total):
        raise SecAggError(f"the aggregate has {len(total)} entries, the meta-parameters {offset} (+1 weight)")
    return out, float(total[-1])
