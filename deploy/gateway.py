"""The coordinator's public port: Flower's Fleet API and nothing else, plus an audit of what sites send.

Flower 1.42's SuperLink serves its Fleet, Control and Runtime APIs on one HTTP(S) port, and the
open-source Control API has no account authentication: whoever reaches that port can register
a SuperNode key or start a run. So fedmeta keeps the SuperLink on loopback and puts this gateway
on the port the sites dial. It terminates TLS with the coordinator's certificate, forwards only
`/v1/fleet/*` (where every call is checked by SuperNode authentication) to the SuperLink, and
refuses everything else with 403.

With `audit` on it appends one JSON line per object a site pushes: the object's type and, for
arrays, dtype and shape; for metric and config records, their keys and value kinds. It never
writes array contents. This is what lets a hospital, and the tests, check that only
meta-gradients and scalar metrics leave a site.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

FLEET_PREFIX = "/v1/fleet/"
_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "content-encoding"}
log = logging.getLogger("fedmeta.gateway")


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
    """Append-only JSON lines, one per object a site pushed (thread-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def push_object(self, body: bytes, client: str) -> None:
        from flwr.proto.message_pb2 import PushObjectRequest

        request = PushObjectRequest.FromString(body)
        try:
            entry = describe_object(request.object_content)
        except Exception as error:  # an object Flower itself will reject: record that it came
            entry = {"type": "unparsed", "error": str(error)}
        self._write({"time": time.time(), "client": client, "node_id": request.node.node_id, "run_id": request.run_id, **entry})

    def refused(self, path: str, client: str) -> None:
        self._write({"time": time.time(), "client": client, "refused": path})

    def _write(self, entry: dict) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def create_gateway(upstream: str, ca_cert: Path, audit: Audit | None = None, timeout: float = 300.0) -> Starlette:
    """A Starlette app forwarding `/v1/fleet/*` to `https://upstream` (the loopback SuperLink)."""
    client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=_loopback_context(ca_cert), timeout=timeout)

    async def forward(request: Request) -> Response:
        path = request.url.path
        peer = request.client.host if request.client else "?"
        if not path.startswith(FLEET_PREFIX):
            log.warning("refused %s %s from %s: only the Fleet API is served on this port", request.method, path, peer)
            if audit is not None:
                audit.refused(path, peer)
            return PlainTextResponse(
                f"fedmeta gateway: {path} is not served here. This port carries only Flower's Fleet API ({FLEET_PREFIX}); "
                "the coordinator's Control API is on its loopback interface.", status_code=403)
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            upstream_response = await client.request(request.method, path, params=request.query_params, content=body, headers=headers)
        except httpx.HTTPError as error:
            log.error("SuperLink unreachable on %s: %s", upstream, error)
            return PlainTextResponse("fedmeta gateway: the coordinator's SuperLink is not reachable; retry later", status_code=503)
        if audit is not None and path == f"{FLEET_PREFIX}push-object" and upstream_response.status_code == 200:
            audit.push_object(body, peer)
        out_headers = {k: v for k, v in upstream_response.headers.items() if k.lower() not in _HOP_HEADERS}
        return Response(upstream_response.content, status_code=upstream_response.status_code, headers=out_headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ARG001
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])], lifespan=lifespan)


class GatewayServer:
    """The gateway on `bind:port` with TLS, in a background thread; `stop()` shuts it down."""

    def __init__(self, app: Starlette, bind: str, port: int, certfile: Path, keyfile: Path, log_file: Path | None = None):
        import uvicorn

        config = uvicorn.Config(app, host=bind, port=port, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile),
                                log_level="warning", access_log=False, lifespan="on")
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
                raise RuntimeError(f"the fleet gateway did not start on {self.server.config.host}:{self.server.config.port}: "
                                   "is the port in use? (set fleet-port in coordinator.toml)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
