"""Who replied and why the others did not, and the small pieces the strategy is made of."""

import uuid

import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict

from server.exchange import Outcome, clean_reason
from server.schedule import Sampling, Schedule
from tests.server.test_fedmeta import task_identity  # noqa: F401 -- autouse fixture

RAY_TRACEBACK = (
    '\x1b[31mTraceback (most recent call last):\n  File "ray/_private/worker.py", line 2, in get\n'
    "ray.exceptions.RayTaskError(ClientAppException): ray::ClientAppActor.run()\n"
    "<class 'RuntimeError'> Message: site 'general': 1 problem(s) in its data folder'>\x1b[0m"
)


def sent(node: int) -> Message:
    message = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as a grid stamps it
    return message


def test_replies_errors_and_silence_are_attributed_to_their_nodes():
    out = [sent(11), sent(22), sent(33)]
    replies = [Message(RecordDict(), reply_to=out[0]), Message(Error(code=0, reason=RAY_TRACEBACK), reply_to=out[1])]
    outcome = Outcome.of(replies, out, timeout=5)
    assert list(outcome.replies) == [11]
    assert outcome.failures == {
        22: "site 'general': 1 problem(s) in its data folder",
        33: "no reply within 5 s (train)",
    }


def test_a_plain_reason_is_kept_and_an_empty_one_survives():
    assert clean_reason("site-3 has no GPU") == "site-3 has no GPU"
    assert clean_reason("") == ""


def test_the_schedule_resumes_mid_run_and_always_evaluates_the_last_round():
    schedule = Schedule(num_rounds=7, eval_every=3)
    assert list(schedule.rounds(5)) == [5, 6, 7]
    assert [r for r in schedule.rounds() if schedule.evaluates(r)] == [3, 6, 7]


@pytest.mark.parametrize("fraction", [0.01, 0.5, 1.0])
def test_sampling_is_reproducible_and_never_empty(fraction):
    pool = [2**63 + 977 * i for i in range(6)]
    picked = Sampling(fraction, seed=4).choose(pool, 2)
    assert picked == Sampling(fraction, seed=4).choose(pool, 2) and set(picked) <= set(pool)
    assert len(picked) == max(1, round(6 * fraction))
