"""Everything a site sends, checked once, before the coordinator uses any of it.

A reply comes from a machine the coordinator does not control: an outdated fedmeta, a broken
site, or a hostile one. Each reader here takes one kind of reply (site description, meta-gradient
and training metrics, evaluation metrics, the secure-aggregation stages), checks every field it
will hand on (present, of the right type, finite, in range, no unknown keys) and returns plain
values; anything else raises `Rejected` with the field and the reason. The strategy records the
site by name with that reason and goes on with the round: a bad reply costs its sender the
round, never the federation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from flwr.app import RecordDict

from common.privacy import l2_norm
from common.scenario import ROLES

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_TEXT = 128  # a site's name or device description is short; longer text is not a description
KEY_BYTES = 32  # an X25519 public key, raw


class Rejected(ValueError):
    """A reply, or a field of one, that the coordinator must not use; the message says why."""


@dataclass(frozen=True)
class ReplyLimits:
    """What an honest site can send, from the run config: at most `tasks_per_round` training
    tasks, exactly `eval_tasks` evaluation episodes (None: any count), a meta-gradient norm of at
    most `max_update_norm` (0: unbounded)."""

    tasks_per_round: int = 2**31
    eval_tasks: int | None = None
    max_update_norm: float = 0.0


Rule = Callable[[str, float], float]


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise Rejected(f"'{key}' is {kind}, expected one number")
    return float(value)


def finite(low: float = -math.inf, high: float = math.inf) -> Rule:
    def rule(key: str, value: float) -> float:
        if not math.isfinite(value):
            raise Rejected(f"'{key}' is {value}, not a finite number")
        if not low <= value <= high:
            raise Rejected(f"'{key}' = {value:g} is outside [{low:g}, {high:g}]")
        return value

    return rule


def count(low: int, high: int) -> Rule:
    def rule(key: str, value: float) -> float:
        if not math.isfinite(value) or value != int(value):
            raise Rejected(f"'{key}' = {value} is not a whole number")
        if not low <= value <= high:
            raise Rejected(
                f"'{key}' = {int(value)} is outside [{low}, {high}]"
                if low != high
                else f"'{key}' = {int(value)}, expected {low}"
            )
        return float(int(value))

    return rule


def half_width(allow_nan: bool) -> Rule:
    """A CI half-width: finite and >= 0; NaN only where one episode makes it undefined."""
    nonnegative = finite(0.0)

    def rule(key: str, value: float) -> float:
        return value if allow_nan and math.isnan(value) else nonnegative(key, value)

    return rule


FRACTION = finite(0.0, 1.0)
NONNEGATIVE = finite(0.0)
# what `common.algorithms` reports per evaluation episode, and the range of its mean
EVAL_MEANS: dict[str, Rule] = {
    "acc-before": FRACTION,
    "acc-after": FRACTION,
    "auc-after": FRACTION,
    "loss-after": NONNEGATIVE,
    "support-acc-before": FRACTION,
    "support-acc-after": FRACTION,
}


def scalars(record: Mapping[str, object], schema: Mapping[str, Rule]) -> dict[str, float]:
    """Exactly the keys of `schema`, each one number that passes its rule."""
    unexpected = sorted(set(record) - set(schema))
    if unexpected:
        raise Rejected(f"unexpected key(s) {unexpected[:5]}")
    missing = sorted(set(schema) - set(record))
    if missing:
        raise Rejected(f"missing key(s) {missing[:5]}")
    return {key: rule(key, _number(key, record[key])) for key, rule in schema.items()}


def _record(content: RecordDict, name: str, kind: str):
    by_kind: dict[str, Mapping[str, object]] = {
        "metrics": content.metric_records,
        "config": content.config_records,
        "arrays": content.array_records,
    }
    records = by_kind[kind]
    if name not in records:
        raise Rejected(f"no '{name}' record")
    return records[name]


def _text(info: Mapping[str, object], key: str) -> str:
    value = info.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or not value.isprintable():
        raise Rejected(f"'{key}' must be a short printable text, got {type(value).__name__}")
    return value


def _whole(info: Mapping[str, object], key: str) -> int:
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Rejected(f"'{key}' must be a count (an integer >= 0), got {value!r:.40}")
    return value


@dataclass(frozen=True)
class SiteClaim:
    """What a site says about itself. The coordinator decides who it is (see `server.sites`)."""

    name: str
    role: str
    num_train: int
    num_test: int
    device: str
    partition: int | None  # simulation: the partition the node was given


SITE_KEYS = frozenset({"site-name", "role", "num-train", "num-test", "device", "partition-id"})


def site_claim(content: RecordDict) -> SiteClaim:
    info = _record(content, "site", "config")
    unexpected = sorted(set(info) - SITE_KEYS)
    if unexpected:
        raise Rejected(f"site description with unexpected key(s) {unexpected[:5]}")
    role = _text(info, "role")
    if role not in ROLES:
        raise Rejected(f"'role' = {role!r}, expected one of {ROLES}")
    partition = _whole(info, "partition-id") if "partition-id" in info else None
    return SiteClaim(
        _text(info, "site-name"),
        role,
        _whole(info, "num-train"),
        _whole(info, "num-test"),
        _text(info, "device"),
        partition,
    )


def train_metrics(content: RecordDict, tasks_per_round: int, with_tasks: bool = True) -> dict[str, float]:
    """The training metrics of a round: task count (not under secure aggregation, where it stays
    at the site), query loss and accuracy, seconds of compute."""
    schema: dict[str, Rule] = {"meta-loss": NONNEGATIVE, "query-acc": FRACTION, "compute-s": NONNEGATIVE}
    if with_tasks:
        schema["num-tasks"] = count(1, tasks_per_round)
    try:
        return scalars(_record(content, "metrics", "metrics"), schema)
    except Rejected as error:
        raise Rejected(f"training metrics: {error}") from None


def evaluation_metrics(content: RecordDict, eval_tasks: int | None) -> dict[str, float]:
    """Means and CI half-widths over exactly `eval_tasks` episodes (a site cannot weigh more)."""
    try:
        record = _record(content, "metrics", "metrics")
        if "num-tasks" not in record:
            raise Rejected("missing key(s) ['num-tasks']")
        episodes = count(eval_tasks or 1, eval_tasks or 2**31)("num-tasks", _number("num-tasks", record["num-tasks"]))
        schema: dict[str, Rule] = {"num-tasks": count(int(episodes), int(episodes))}
        for key, rule in EVAL_MEANS.items():
            schema[key], schema[f"{key}-ci"] = rule, half_width(allow_nan=episodes == 1)
        return scalars(record, schema)
    except Rejected as error:
        raise Rejected(f"evaluation metrics: {error}") from None


def check_update(
    update: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], weight: float, max_norm: float = 0.0
) -> str | None:
    """Why a meta-gradient must not enter the aggregate, or None when it may: the
    meta-parameters' keys and shapes, a float dtype, finite values, a positive task count, and
    an L2 norm of at most `max_norm` (when > 0)."""
    missing, extra = sorted(reference.keys() - update.keys()), sorted(update.keys() - reference.keys())
    if missing or extra:
        return f"wrong meta-gradient keys (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, ref in reference.items():
        value = update[name]
        if tuple(value.shape) != tuple(ref.shape):
            return f"meta-gradient {name!r} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
        if value.dtype not in FLOAT_DTYPES:
            return f"meta-gradient {name!r} has dtype {value.dtype}, expected a float type"
        if not torch.isfinite(value).all():
            return f"meta-gradient {name!r} has non-finite values"
    if not (math.isfinite(weight) and weight > 0):
        return f"num-tasks={weight} is not a positive count"
    if max_norm > 0:
        norm = l2_norm(update)
        if norm > max_norm:
            return f"meta-gradient norm {norm:.3g} exceeds the bound max-update-norm={max_norm:g}"
    return None


@dataclass(frozen=True)
class TrainReply:
    update: dict[str, torch.Tensor]
    weight: float
    metrics: dict[str, float]


def train_reply(
    content: RecordDict,
    arrays_key: str,
    reference: Mapping[str, torch.Tensor],
    tasks_per_round: int,
    max_norm: float = 0.0,
) -> TrainReply:
    """A training reply's meta-gradient, task count and metrics, all checked."""
    if arrays_key not in content.array_records:
        raise Rejected(f"reply without '{arrays_key}' arrays")
    metrics = train_metrics(content, tasks_per_round)
    try:
        update = content.array_records[arrays_key].to_torch_state_dict()
    except Exception as error:  # noqa: BLE001 -- an undecodable array is the site's fault, not the round's
        raise Rejected(f"arrays that cannot be decoded ({error})") from None
    problem = check_update(update, reference, metrics["num-tasks"], max_norm)
    if problem is not None:
        raise Rejected(problem)
    return TrainReply(update, metrics["num-tasks"], metrics)


# ---- secure aggregation: one reader per stage (`server.secure`)


def _list(record: Mapping[str, object], key: str, kind: type) -> list:
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise Rejected(f"'{key}' must be a list of {kind.__name__}")
    return value


def secagg_keys(content: RecordDict, tasks_per_round: int) -> tuple[bytes, bytes, dict[str, float]]:
    """Stage 1: two raw X25519 public keys, and the training metrics without the task count."""
    keys = _record(content, "secagg", "config")
    public = []
    for key in ("c-pk", "s-pk"):
        value = keys.get(key)
        if not isinstance(value, bytes) or len(value) != KEY_BYTES:
            raise Rejected(f"'{key}' must be a {KEY_BYTES}-byte public key")
        public.append(value)
    return public[0], public[1], train_metrics(content, tasks_per_round, with_tasks=False)


def secagg_shares(content: RecordDict, peers: set[int]) -> dict[int, bytes]:
    """Stage 2: one encrypted share pair per peer index the coordinator announced."""
    shares = _record(content, "secagg", "config")
    to, blobs = _list(shares, "to", int), _list(shares, "blobs", bytes)
    if len(to) != len(blobs) or len(set(to)) != len(to) or not set(to) <= peers:
        raise Rejected("shares must name distinct announced peers, one blob each")
    return dict(zip(to, blobs))


def secagg_masked(content: RecordDict, length: int) -> tuple[torch.Tensor, int]:
    """Stage 3: the masked vector (uint64, the meta-parameters' size + 1) and the clipped count."""
    masked = _record(content, "masked", "arrays")
    if list(masked) != ["y"]:
        raise Rejected("the masked record must hold exactly one array 'y'")
    array = masked["y"]
    if array.dtype != "uint64" or list(array.shape) != [length]:
        raise Rejected(f"masked vector of {array.dtype} {list(array.shape)}, expected uint64 [{length}]")
    clipped = scalars(_record(content, "masked-info", "metrics"), {"clipped": count(0, length)})["clipped"]
    return array, int(clipped)


def secagg_unmask(content: RecordDict, indices: set[int]) -> dict[str, dict[int, bytes]]:
    """Stage 4: the shares of survivors' self masks (b) and of dropped sites' keys (s)."""
    record = _record(content, "secagg", "config")
    out = {}
    for part in ("b", "s"):
        holders, blobs = _list(record, f"{part}-from", int), _list(record, part, bytes)
        if len(holders) != len(blobs) or not set(holders) <= indices:
            raise Rejected(f"'{part}' shares must name announced sites, one blob each")
        out[part] = dict(zip(holders, blobs))
    return out
