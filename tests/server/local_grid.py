"""An in-process Flower grid for strategy tests: messages go to the real ClientApp handlers, each
site with its own `Context` that persists across messages as a SuperNode's does. A site can be
made to die at a given message type, or to tamper with its replies (a hostile site). Everything
else (data, models, keys) is real."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from flwr.app import Context, Error, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo

from client.app import app as client_app

NODES = [101, 202, 303, 404]

# the smallest run a strategy test trains: a 2-stage width-8 model, one inner step, two tasks a
# round, a plain SGD server step, on the CPU; each test adds what it is about (ways, rate, rounds)
TINY_RUN = {
    "shots": 2,
    "queries": 3,
    "model-width": 8,
    "model-groups": 2,
    "model-depth": 2,
    "inner-steps": 1,
    "tasks-per-round": 2,
    "outer-optimizer": "sgd",
    "device": "cpu",
}


class LocalGrid:
    """Delivers messages to the ClientApp in this process; `dead` maps node -> the stage it dies at."""

    def __init__(
        self,
        run_config: dict,
        dead: dict[int, str] | None = None,
        node_configs: dict[int, dict] | None = None,
        names: dict[int, str] | None = None,
        tamper: dict[int, Callable[[str, Message], Message]] | None = None,
    ):
        node_configs = node_configs or {n: {"partition-id": i} for i, n in enumerate(NODES)}
        self.names = dict(names or {})  # node -> registered name (a deployment's registry); none in simulation
        self.tamper = dict(tamper or {})  # node -> what a hostile site does to its reply (message type, reply) -> reply
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=c, state=RecordDict(), run_config=run_config)
            for n, c in node_configs.items()
        }
        self.dead = dict(dead or {})
        self.seen: list[
            tuple[int, str, Message]
        ] = []  # (node, message type, reply): everything the coordinator received

    def get_node_ids(self):
        return list(self.contexts)

    def get_nodes(self):
        return [NodeInfo(node_id=n, name=self.names.get(n, "")) for n in self.contexts]

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as every Flower grid stamps it
            node, kind = message.metadata.dst_node_id, message.metadata.message_type
            if node in self.dead and (self.dead[node] == kind or self.dead[node] == "gone"):
                self.dead[node] = "gone"  # a dead site stays dead
                continue
            try:
                reply = client_app(message, self.contexts[node])
            except Exception as error:  # noqa: BLE001 -- what a SuperNode turns into an error reply
                reply = Message(Error(code=0, reason=str(error)), reply_to=message)
            if node in self.tamper and not reply.has_error():
                reply = self.tamper[node](kind, reply)
            self.seen.append((node, kind, reply))
            replies.append(reply)
        return replies
