"""The coordinator's public port: Flower's Fleet API and nothing else, plus an audit of what sites send.

Flower 1.42's SuperLink serves its Fleet, Control and Runtime APIs on one HTTP(S) port, and the
open-source Control API has no account authentication: whoever reaches that port can register
a SuperNode key or start a run. So fedmeta keeps the SuperLink on loopback and puts this gateway
on the port the sites dial. It terminates TLS with the coordinator's certificate and forwards a
request to the SuperLink only when it is exactly one of the Fleet API calls a registered
SuperNode makes (`FLEET_PATHS`: a POST to that literal path, no query, no encoding, no dot
segments), with only the headers Flower's Fleet client sends. Everything else is refused with
403 and written to the audit: traversal (`/v1/fleet/../control/...`, percent-encoded or not),
other APIs, other methods, Fleet self-registration (sites are registered by the coordinator's
operator, never over the network), WebSockets. What is forwarded is the path that was checked.

With `audit` on it appends one JSON line per object a site pushes: the object's type and, for
arrays, dtype and shape; for metric and config records, their keys and value kinds. It never
writes array contents. This is what lets a hospital, and the tests, check that only
meta-gradients and scalar metrics leave a site.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import httpx
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

FLEET_PREFIX = "/v1/fleet/"
# what an authenticated SuperNode calls (flwr/supernode/fleet_http_client.py, Flower 1.42); the
# Fleet API's register-node / unregister-node are for self-registered nodes without keys
FLEET_RPCS = (
    "activate-node",
    "deactivate-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
)
FLEET_PATHS = frozenset(FLEET_PREFIX + rpc for rpc in FLEET_RPCS)
SELF_REGISTRATION = frozenset(FLEET_PREFIX + rpc for rpc in ("register-node", "unregister-node"))
# request headers Flower's Fleet client sends: content negotiation, SuperNode authentication
# (public key, signature, signed timestamp) and version metadata; nothing else reaches the SuperLink
FORWARDED_HEADERS = frozenset(
    {
        "content-type",
        "accept",
        "accept-encoding",
        "user-agent",
        "flwr-public-key",
        "flwr-signature",
        "flwr-timestamp",
        "flwr-package-name",
        "flwr-package-version",
        "flwr-component-name",
    }
)
RETURNED_HEADERS = frozenset({"content-type"})
log = logging.getLogger("fedmeta.gateway")


def normalize_path(raw: str) -> str:
    """What a lenient server could make of `raw`: percent-decoded until stable, backslashes as
    slashes, duplicate slashes collapsed, `.` and `..` resolved. For the audit and the refusal
    message; admission compares the raw path itself."""
    path = raw
    for _ in range(5):  # %252e -> %2e -> .
        decoded = unquote(path, errors="replace")
        if decoded == path:
            break
        path = decoded
    segments: list[str] = []
    for segment in path.replace("\\", "/").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
        else:
            segments.append(segment)
    return "/" + "/".join(segments)


@dataclass(frozen=True)
class Decision:
    path: str | None  # the path to forward, or None: refused
    reason: str = ""


def admit(method: str, raw_path: bytes, query: bytes) -> Decision:
    """Whether a request may reach the SuperLink, and as which path. Only the literal Fleet RPC
    paths pass; a path that would mean a Fleet call only after decoding or normalising does not
    (Flower's own client never sends one), so what was checked is exactly what is forwarded."""
    path = raw_path.decode("latin-1")
    if path in SELF_REGISTRATION:
        return Decision(
            None,
            "SuperNodes cannot register themselves here: the coordinator's operator registers each "
            "site's key (authorized-sites.csv)",
        )
    if path not in FLEET_PATHS:
        normalized = normalize_path(path)
        target = f" (it resolves to {normalized})" if normalized != path else ""
        return Decision(
            None,
            f"{path}{target} is not a Fleet API call: this port carries only Flower's Fleet API; "
            "the coordinator's Control API is on its loopback interface",
        )
    if method != "POST":
        return Decision(None, f"{method} {path}: Fleet API calls are POST requests")
    if query:
        return Decision(None, f"{path}?{query.decode('latin-1')}: Fleet API calls carry no query string")
    return Decision(path)


def _loopback_context(ca_cert: Path) -> ssl.SSLContext:
    """Trust the consortium CA on the loopback hop; the certificate names the public hosts, not 127.0.0.1."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    context.check_hostname = False
    return context


def describe_object(content: bytes) -> dict[str, object]:
    """Type and shape of one pushed Flower object, never its values (arrays) ."""
    from flwr.app import ConfigRecord, MetricRecord
    from flwr.supercore.inflatable.inflatable_object import _get_object_body, get_object_head_values_from_object_content

    kind, children, size = get_object_head_values_from_object_content(content)
    entry: dict[str, object] = {"type": kind, "bytes": size, "children": len(children)}
    body = _get_object_body(content)
    if kind == "Array":
        meta = json.loads(body)
        entry.update(dtype=meta["dtype"], shape=list(meta["shape"]))
    elif kind in ("MetricRecord", "ConfigRecord"):
        record = (MetricRecord if kind == "MetricRecord" else ConfigRecord).inflate(content)
        entry["keys"] = {k: (f"list[{len(v)}]" if isinstance(v, list) else type(v).__name__) for k, v in record.items()}
    return entry


class Audit:
    """Append-only JSON lines, one per object a site pushed and one per refused request (thread-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def push_object(self, body: bytes, client: str) -> None:
        from flwr.proto.message_pb2 import PushObjectRequest

        request = PushObjectRequest.FromString(body)
        try:
            entry = describe_object(request.object_content)
        except Exception as error:  # noqa: BLE001 -- an object Flower itself will reject: record that it came
            entry = {"type": "unparsed", "error": str(error)}
        self._write(
            {"time": time.time(), "client": client, "node_id": request.node.node_id, "run_id": request.run_id, **entry}
        )

    def refused(self, path: str, client: str, method: str = "", reason: str = "") -> None:
        self._write(
            {
                "time": time.time(),
                "client": client,
                "method": method,
                "refused": path,
                "normalized": normalize_path(path),
                "reason": reason,
            }
        )

    def _write(self, entry: dict) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


class FleetGateway:
    """An ASGI app forwarding admitted Fleet API calls to `https://upstream` (the loopback SuperLink).

    A plain ASGI callable rather than a routed framework app: every request, whatever its method,
    target form or path, reaches `admit` first."""

    def __init__(self, upstream: str, ca_cert: Path, audit: Audit | None = None, timeout: float = 300.0):
        self.upstream = upstream
        self.audit = audit
        self.client = httpx.AsyncClient(
            base_url=f"https://{upstream}", verify=_loopback_context(ca_cert), timeout=timeout
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            response = await self._http(Request(scope, receive))
            await response(scope, receive, send)
        else:  # websocket: nothing of Flower's uses one here
            peer = scope.get("client") or ("?",)
            self._refuse(
                "WEBSOCKET", scope.get("raw_path", b"").decode("latin-1"), str(peer[0]), "WebSockets are not served"
            )
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _refuse(self, method: str, path: str, peer: str, reason: str) -> Response:
        log.warning("refused %s %s from %s: %s", method, path, peer, reason)
        if self.audit is not None:
            self.audit.refused(path, peer, method, reason)
        return PlainTextResponse(f"fedmeta gateway: {reason}", status_code=403)

    async def _http(self, request: Request) -> Response:
        scope = request.scope
        peer = request.client.host if request.client else "?"
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        decision = admit(request.method, raw_path, scope.get("query_string", b""))
        if decision.path is None:
            query = scope.get("query_string", b"")
            target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
            return self._refuse(request.method, target, peer, decision.reason)
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        try:
            upstream = await self.client.post(decision.path, content=body, headers=headers)
        except httpx.HTTPError as error:
            log.error("SuperLink unreachable on %s: %s", self.upstream, error)
            return PlainTextResponse(
                "fedmeta gateway: the coordinator's SuperLink is not reachable; retry later", status_code=503
            )
        if self.audit is not None and decision.path == f"{FLEET_PREFIX}push-object" and upstream.status_code == 200:
            self.audit.push_object(body, peer)
        returned = {k: v for k, v in upstream.headers.items() if k.lower() in RETURNED_HEADERS}
        return Response(upstream.content, status_code=upstream.status_code, headers=returned)


def create_gateway(upstream: str, ca_cert: Path, audit: Audit | None = None, timeout: float = 300.0) -> FleetGateway:
    return FleetGateway(upstream, ca_cert, audit, timeout)


class GatewayServer:
    """The gateway on `bind:port` with TLS, in a background thread; `stop()` shuts it down."""

    def __init__(
        self, app: FleetGateway, bind: str, port: int, certfile: Path, keyfile: Path, log_file: Path | None = None
    ):
        import uvicorn

        config = uvicorn.Config(
            app,
            host=bind,
            port=port,
            ssl_certfile=str(certfile),
            ssl_keyfile=str(keyfile),
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="fedmeta-gateway", daemon=True)
        if log_file is not None:
            handler = logging.FileHandler(log_file)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
        log.setLevel(logging.INFO)

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the fleet gateway did not start on {self.server.config.host}:{self.server.config.port}: "
                    "is the port in use? (set fleet-port in coordinator.toml)"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
