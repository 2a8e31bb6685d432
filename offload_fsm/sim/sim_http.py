"""The simulated server's HTTP plumbing: the request handler and the threaded server.

The handler parses a request (path, query, JSON body), offers it to each group of routes in
turn (SGLang's, vLLM's, the simulator's own control routes; their paths do not overlap) and
sends the :class:`~.sim_server_state.Reply` one raises; a path none answers is a 404.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from offload_fsm.core.errors import ConfigError
from offload_fsm.sim.sim_control_routes import control_routes
from offload_fsm.sim.sim_server_state import Drop, Reply, SimServerState
from offload_fsm.sim.sim_sglang_routes import sglang_routes
from offload_fsm.sim.sim_vllm_routes import vllm_routes

Route = Callable[[SimServerState, str, str, dict[str, list[str]], object], None]
ROUTES: tuple[Route, ...] = (sglang_routes, vllm_routes, control_routes)


class SimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall
    server: SimHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: stdout/stderr stay clean
        return None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _body(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise Reply(400, {"error": {"message": "malformed JSON body"}}) from None

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            body = self._body()
            for route in ROUTES:
                route(self.server.state, method, url.path, query, body)
            raise Reply(404, {"detail": "Not Found"})
        except Reply as reply:
            self._send(reply)
        except Drop:
            self.close_connection = True
        except ConfigError as exc:
            self._send(Reply(400, {"error": {"message": str(exc)}}))

    def _send(self, reply: Reply) -> None:
        if reply.content_type == "application/json":
            data = json.dumps(reply.body).encode()
        else:
            data = str(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not keep the launcher alive

    def __init__(self, address: tuple[str, int], state: SimServerState) -> None:
        self.state = state
        super().__init__(address, SimHandler)
