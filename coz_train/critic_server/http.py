"""The critic server's HTTP layer: standard-library `ThreadingHTTPServer`, one thread per connection.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` (`protocol.py` holds the
shapes). Each connection's thread reads and validates its request, hands it to the batcher
(`CriticServer.submit`) and writes the answer.

Guards:
- a listen backlog of 1024: socketserver's default of 5 resets a burst of trainer requests;
- one total deadline for receiving the whole request (`server.request_deadline_s`, a watchdog that
  shuts the socket), besides the per-read socket timeout: a client trickling a byte at a time would
  otherwise hold its thread forever;
- when the app has a token, every request needs `Authorization: Bearer <token>` (401 otherwise);
- a body over `server.max_request_mb` is refused (413) from its Content-Length before it is read,
  then the connection lingers a bounded time, discarding what the client still sends, so that the
  client reads the 413 instead of a reset;
- a client that hangs up before its answer is sent is one INFO line, not a traceback.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from coz_train.critic_server.protocol import RequestError, error_body

if TYPE_CHECKING:
    from coz_train.critic_server.app import CriticServer

log = logging.getLogger(__name__)

LINGER_S, LINGER_BYTES = 5.0, 256 * 2**20  # an unread (refused) body is discarded for at most this long / much
HANGUPS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CriticHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # connections waiting to be accepted: socketserver's default of 5 resets a burst of trainer requests
    request_queue_size = 1024
    app: CriticServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, HANGUPS):
            log.info("Client %s went away before the answer was sent (%s)", client_address, type(err).__name__)
            return
        log.warning("Error while serving %s", client_address, exc_info=True)


class CriticHTTPServer6(CriticHTTPServer):
    address_family = socket.AF_INET6


def bind(host: str, port: int, app: CriticServer) -> CriticHTTPServer:
    """A server bound to (host, port), IPv6 when the host is an IPv6 address, answering for `app`."""
    server_class = CriticHTTPServer6 if ":" in host else CriticHTTPServer
    httpd = server_class((host, port), CriticHandler)
    httpd.app = app
    return httpd


class CriticHandler(BaseHTTPRequestHandler):
    server: CriticHTTPServer
    server_version = "coz-critic"
    timeout = 60.0  # a connection that stalls this long while sending its request is dropped
    _unread = False  # a request body left unread on the socket

    def setup(self) -> None:
        super().setup()
        # one total deadline for receiving the whole request (a client trickling a byte at a time would otherwise
        # hold this thread forever: the socket timeout only bounds each single read)
        self._deadline_s = float(self.server.app.cfg.server.request_deadline_s)
        self._watchdog = threading.Timer(self._deadline_s, self._drop_slow_client)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _drop_slow_client(self) -> None:
        log.info("Dropping %s: the request was not received within server.request_deadline_s=%g",
                 self.client_address, self._deadline_s)
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self._watchdog.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, error_body(status, message), headers)

    def _authorised(self) -> bool:
        token = self.server.app.token
        if token is None:
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
        self._error(401, "Missing or wrong token: send Authorization: Bearer <token>.", {"WWW-Authenticate": "Bearer"})
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._authorised():
            return
        app, path = self.server.app, urlsplit(self.path).path.rstrip("/")
        if path == "/health":
            self._send_json(200, app.health())
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": app.served_model, "object": "model",
                                                              "owned_by": "coz_train"}]})
        else:
            self._error(404, f"No such endpoint: GET {path}.")

    def do_POST(self) -> None:  # noqa: N802
        self._unread = True
        try:
            self._post()
        finally:
            if self._unread:
                self._linger()

    def _post(self) -> None:
        if not self._authorised():
            return
        app, path = self.server.app, urlsplit(self.path).path.rstrip("/")
        if path != "/v1/chat/completions":
            return self._error(404, f"No such endpoint: POST {path}.")
        if self.headers.get("Transfer-Encoding"):
            return self._error(411, "Send the body with a Content-Length (chunked bodies are not accepted).")
        length = self.headers.get("Content-Length")
        if length is None:
            return self._error(411, "A Content-Length header is required.")
        try:
            size = int(length)
            if size < 0:
                raise ValueError
        except ValueError:
            return self._error(400, f"Bad Content-Length: {length!r}.")
        if size > app.max_body:
            return self._error(413, f"The request body ({size} bytes) is over the limit of {app.max_body} bytes "
                                    f"(server.max_request_mb={app.cfg.server.max_request_mb}).")
        body = self.rfile.read(size)
        self._unread = False
        self._watchdog.cancel()  # the request is in; scoring may take as long as the batcher needs
        if len(body) != size:
            return self._error(400, f"The body ended after {len(body)} of {size} bytes.")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as err:
            return self._error(400, f"The request body is not valid JSON: {err}.")
        try:
            job = app.submit(app.parse(payload))
        except RequestError as err:
            return self._error(err.status, err.message)
        job.done.wait()
        if job.error is not None:
            return self._error(*job.error)
        self._send_json(200, job.result or {})

    def _linger(self) -> None:
        """After refusing a request without reading its body: close our side, discard what the client still sends.

        Closing with unread data makes the kernel reset the connection, and the client may then lose
        our answer (the 413) before reading it; this reads and drops (never stores) the rest, bounded.
        """
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline, seen = time.monotonic() + LINGER_S, 0
            while seen < LINGER_BYTES and time.monotonic() < deadline:
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    break
                seen += len(chunk)
        except OSError:
            pass
