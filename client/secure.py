"""A site's side of secure aggregation (`common.secagg`), with its secrets in Flower's
`context.state`. That state stays on the site's SuperNode between the protocol's messages and is
cleared at the end of the round. What leaves the site: two public keys, encrypted shares (only
the addressed peer can read them), one masked vector, and the shares the coordinator needs to
remove the masks."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord

from client.records import blobs, ints, one
from common import secagg
from common.secagg import SecAggError, SiteState

STATE, VECTOR = "secagg", "secagg-vector"


def _load(context: Context) -> SiteState:
    if STATE not in context.state:
        raise SecAggError("no secure-aggregation state on this site: the round's first stage did not run here")
    return SiteState.from_bytes(bytes(cast(bytes, context.state.config_records[STATE]["state"])))  # as _save wrote it


def _save(context: Context, state: SiteState) -> None:
    context.state[STATE] = ConfigRecord({"state": state.to_bytes()})


def advertise(context: Context, index: int, grads: dict[str, torch.Tensor], weight: float) -> ConfigRecord:
    """Stage 1: keep `weight * grads` (flattened, weight appended) and fresh keys; the public keys out."""
    vector = np.concatenate([g.flatten().double().numpy() * weight for g in grads.values()] + [np.array([weight])])
    state, (c_public, s_public) = secagg.advertise(index)
    _save(context, state)
    context.state[VECTOR] = ArrayRecord({"v": torch.from_numpy(vector)})
    return ConfigRecord({"c-pk": c_public, "s-pk": s_public})


def share(context: Context, config: ConfigRecord) -> ConfigRecord:
    state = _load(context)
    public = {
        i: (bytes(c), bytes(s))
        for i, c, s in zip(ints(config, "secagg-indices"), blobs(config, "secagg-c-pks"), blobs(config, "secagg-s-pks"))
    }
    encrypted = secagg.share_keys(state, public, int(one(config, "secagg-threshold")))
    _save(context, state)
    return ConfigRecord({"to": list(encrypted), "blobs": list(encrypted.values())})


def mask(context: Context, config: ConfigRecord) -> tuple[ArrayRecord, MetricRecord]:
    state = _load(context)
    if VECTOR not in context.state:
        raise SecAggError("no meta-gradient kept on this site for this round")
    vector = context.state.array_records[VECTOR].to_torch_state_dict()["v"].numpy()
    received = {i: bytes(b) for i, b in zip(ints(config, "secagg-from"), blobs(config, "secagg-blobs"))}
    clip_range = float(one(config, "secagg-clip-range"))
    y = secagg.masked_input(state, vector, received, clip_range, int(one(config, "secagg-levels")))
    _save(context, state)
    del context.state[VECTOR]  # the plain vector is not needed any more
    return ArrayRecord({"y": Array(y)}), MetricRecord({"clipped": secagg.clipped_count(vector, clip_range)})


def unmask(context: Context, config: ConfigRecord) -> ConfigRecord:
    state = _load(context)
    shares = secagg.unmask(state, ints(config, "secagg-survivors"), ints(config, "secagg-dropped"))
    del context.state[STATE]  # the round is over: forget its secrets
    return ConfigRecord(
        {
            "b-from": list(shares["b"]),
            "b": list(shares["b"].values()),
            "s-from": list(shares["s"]),
            "s": list(shares["s"].values()),
        }
    )
