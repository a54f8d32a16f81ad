"""The critic VLM over HTTP: an OpenAI-compatible chat-completions endpoint with server-side batching.

    python -m coz_train.critic_server critic=qwen2_5_vl_7b server.port=8000

Endpoints:
- `GET /health` -> `{"status": "ok", "model": <served name>, "scoring": <critic.scoring>, ...}`
- `GET /v1/models` -> the OpenAI model list (one model)
- `POST /v1/chat/completions` -> the OpenAI chat-completions shape: `messages` whose `content` is a
  string or a list of `{"type": "text", "text"}` / `{"type": "image_url", "image_url": {"url":
  "data:image/png;base64,..."}}` parts; `max_tokens` (or `max_completion_tokens`, default
  `critic.max_new_tokens`), `logprobs`, `top_logprobs` (-1 = the whole vocabulary). Decoding is
  greedy (`temperature` absent or 0); `logprobs` are those of the raw logits (vLLM's default
  `raw_logprobs`), the numbers the in-process `logits` scoring mode uses. The served name is
  `critic.served_model`, default `critic.name_or_path`; a request naming another model is a 404.

Only the standard library serves (`http.server.ThreadingHTTPServer`): each connection's thread
reads, validates and decodes its request, then hands it to one batcher thread, which gathers up to
`server.max_batch` requests (waiting at most `server.batch_wait_ms` after the first) and runs them
through the model together (`HFCritic.generate`, the code the in-process critic uses); out of
memory, a batch is split in halves. One log line per batch (size, seconds).

Guards: binds to `server.host` (loopback by default); when `$<server.token_env>` is set every request
needs `Authorization: Bearer <token>` (401 otherwise), and a non-loopback host without a token
refuses to start. A body over `server.max_request_mb` is refused (413) from its Content-Length,
before it is read; more than `server.max_images` images is a 400; images are accepted only as
base64 data URLs (the server fetches nothing); malformed JSON or shapes get a 400 saying what is
wrong.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import torch
from omegaconf import DictConfig

from coz_train.rewards.critic import HFCritic, critic_device

log = logging.getLogger(__name__)

MAX_TOKENS_CAP = 1024  # per request
LINGER_S, LINGER_BYTES = 5.0, 256 * 2**20  # an unread (refused) body is discarded for at most this long / much
ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    """A request the server refuses: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ChatRequest:
    conversation: list[dict]  # transformers chat format, images as PIL images
    max_tokens: int
    logprobs: bool = False
    top_logprobs: int = 0  # -1: the whole vocabulary


@dataclass
class Job:
    request: ChatRequest
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: tuple[int, str] | None = None

    def finish(self, result: dict | None = None, error: tuple[int, str] | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def decode_image(url: Any, where: str, max_pixels: int | None = None) -> Any:
    from PIL import Image

    if not isinstance(url, str) or not url.startswith("data:"):
        raise RequestError(400, f"{where}: images must be base64 data URLs (data:image/png;base64,...); "
                                "this server fetches nothing.")
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise RequestError(400, f"{where}: expected a base64 data URL (data:image/png;base64,...).")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f"{where}: the image is not valid base64 ({err}).") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise RequestError(413, f"{where}: the image is {image.width}x{image.height} = {image.width * image.height} "
                                    f"pixels, over server.max_image_pixels={max_pixels}.")
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise RequestError(400, f"{where}: the image cannot be decoded ({type(err).__name__}: {err}).") from None
    return image


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_chat_request(payload: Any, *, served_model: str, max_images: int, default_max_tokens: int,
                       max_image_pixels: int | None = None, max_request_pixels: int | None = None) -> ChatRequest:
    """Validate an OpenAI chat-completions request and turn it into a transformers conversation."""
    if not isinstance(payload, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    model = payload.get("model")
    if model not in (None, "") and model != served_model:
        raise RequestError(404, f"The model '{model}' is not served here; this server serves '{served_model}'.")
    if payload.get("stream"):
        raise RequestError(400, "stream=true is not supported.")
    if payload.get("n", 1) not in (None, 1):
        raise RequestError(400, "n must be 1.")
    temperature = payload.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature != 0):
        raise RequestError(400, "This server decodes greedily: temperature must be 0 or absent.")
    max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens"))
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    if not _integer(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS_CAP:
        raise RequestError(400, f"max_tokens must be an integer in 1..{MAX_TOKENS_CAP}, got {max_tokens!r}.")
    logprobs = payload.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise RequestError(400, f"logprobs must be true or false, got {logprobs!r}.")
    top_logprobs = payload.get("top_logprobs") or 0
    if not _integer(top_logprobs) or top_logprobs < -1:
        raise RequestError(400, f"top_logprobs must be an integer >= 0 (or -1 for all), got {top_logprobs!r}.")
    if top_logprobs and not logprobs:
        raise RequestError(400, "top_logprobs needs logprobs: true.")

    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list of {role, content} objects.")
    parsed, images = [], 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(400, f"{where} must be an object with role in {list(ROLES)} and a content.")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list) or not content:
            raise RequestError(400, f"{where}.content must be a string or a non-empty list of parts.")
        parts = []
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                parts.append({"type": "image", "image": url, "at": at})
                images += 1
            else:
                raise RequestError(400, f"{at} must be {{\"type\": \"text\", \"text\": ...}} or "
                                        "{\"type\": \"image_url\", \"image_url\": {\"url\": ...}}.")
        parsed.append({"role": message["role"], "content": parts})
    if images > max_images:
        raise RequestError(400, f"The request has {images} images; this server takes at most {max_images} "
                                "(server.max_images).")
    total = 0
    for message in parsed:  # decode only once the counts are known to be fine
        for part in message["content"]:
            if part["type"] == "image":
                part["image"] = decode_image(part["image"], where := part.pop("at"), max_image_pixels)
                total += part["image"].width * part["image"].height
                if max_request_pixels is not None and total > max_request_pixels:
                    raise RequestError(413, f"{where}: the request's images reach {total} pixels, over "
                                            f"server.max_request_pixels={max_request_pixels}.")
    return ChatRequest(parsed, max_tokens, logprobs, top_logprobs)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # connections waiting to be accepted: socketserver's default of 5 resets a burst of trainer requests
    request_queue_size = 1024
    app: CriticServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            log.info("Client %s went away before the answer was sent (%s)", client_address, type(err).__name__)
            return
        log.warning("Error while serving %s", client_address, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
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
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

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


class CriticServer:
    """The HTTP server, its batcher thread and the critic model; `start()`/`stop()` or a `with` block."""

    def __init__(self, cfg: DictConfig, critic: Any = None):
        self.cfg, server = cfg, cfg.server
        token = os.environ.get(server.token_env) if server.token_env else None
        self.token = token or None
        if not is_loopback(server.host) and self.token is None:
            raise ValueError(
                f"server.host={server.host!r} is not a loopback address, and no token is set: anyone who can reach "
                f"it could use the critic. Set a shared secret in ${server.token_env} (server.token_env) on the "
                "server and the trainers, or keep server.host=127.0.0.1 (e.g. behind an SSH tunnel)."
            )
        if critic is None and cfg.critic.backend != "hf":
            raise ValueError(
                f"The critic server runs critic.backend=hf models (transformers image-text-to-text); this critic "
                f"option has backend={cfg.critic.backend}: use e.g. critic=qwen2_5_vl_7b, or critic=tiny offline."
            )
        self.served_model = cfg.critic.served_model or cfg.critic.name_or_path
        self.max_body = int(server.max_request_mb * 2**20)
        server_class = _HTTPServer6 if ":" in server.host else _HTTPServer
        self.httpd = server_class((server.host, server.port), _Handler)  # bind first: a busy port fails fast
        self.httpd.app = self
        try:
            self.critic = critic if critic is not None else HFCritic(
                cfg.critic, critic_device(cfg.critic.device), shared_prefix=bool(cfg.perf.critic_prefix))
            if critic is None and cfg.perf.image_cache:
                from coz_train.perf.image_cache import install_image_cache

                install_image_cache(self.critic.processor)
        except BaseException:
            self.httpd.server_close()
            raise
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stopping = False
        self._stats: dict[str, Any] = {"batches": 0, "requests": 0, "batch_sizes": []}
        self._token_text: dict[int, str] = {}
        self._batcher = threading.Thread(target=self._batch_loop, name="critic-batcher", daemon=True)
        self._serving = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                         name="critic-http", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.cfg.server.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def stats(self) -> dict[str, Any]:
        """Batches run, requests answered, and each batch's size (for tests and monitoring)."""
        with self._lock:
            return {**self._stats, "batch_sizes": list(self._stats["batch_sizes"])}

    def start(self) -> CriticServer:
        self._batcher.start()
        self._serving.start()
        log.info("Critic server for %s on %s (max_batch=%d, batch_wait_ms=%d, %s)", self.served_model, self.url,
                 self.cfg.server.max_batch, self.cfg.server.batch_wait_ms,
                 "token required" if self.token else "no token")
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        if self._serving.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self._queue.put(None)
        if self._batcher.is_alive():
            self._batcher.join()
        while True:  # nothing is submitted once _stopping is set
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.finish(error=(503, "The critic server is shutting down."))
        log.info("Critic server on %s stopped", self.url)

    def __enter__(self) -> CriticServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- requests -------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        critic = self.cfg.critic
        return {"status": "ok", "model": self.served_model, "scoring": critic.scoring, "score_max": critic.score_max,
                "max_images": self.cfg.server.max_images, "max_batch": self.cfg.server.max_batch}

    def parse(self, payload: Any) -> ChatRequest:
        server = self.cfg.server
        request = parse_chat_request(payload, served_model=self.served_model, max_images=server.max_images,
                                     default_max_tokens=self.cfg.critic.max_new_tokens,
                                     max_image_pixels=server.max_image_pixels,
                                     max_request_pixels=server.max_request_pixels)
        texts = [part["text"] for message in request.conversation for part in message["content"]
                 if part["type"] == "text"]
        tokens = sum(len(self.critic.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
        if tokens > server.max_prompt_tokens:
            raise RequestError(413, f"The request's text is {tokens} tokens, over server.max_prompt_tokens="
                                    f"{server.max_prompt_tokens}.")
        return request

    def submit(self, request: ChatRequest) -> Job:
        job = Job(request)
        with self._lock:
            if self._stopping:
                raise RequestError(503, "The critic server is shutting down.")
            self._queue.put(job)
        return job

    def _batch_loop(self) -> None:
        max_batch, wait_s = max(1, self.cfg.server.max_batch), max(0, self.cfg.server.batch_wait_ms) / 1000
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch, stop = [job], False
            deadline = time.monotonic() + wait_s
            while len(batch) < max_batch:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run(batch)
            if stop:
                return

    def _run(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        results: list[dict] | None = None
        error = (500, "The critic failed.")
        try:
            results = self.complete([job.request for job in jobs])
        except torch.OutOfMemoryError:
            if len(jobs) > 1:
                torch.cuda.empty_cache()
                log.warning("Critic out of memory on a batch of %d: splitting it", len(jobs))
                half = len(jobs) // 2
                self._run(jobs[:half])
                self._run(jobs[half:])
                return
            log.exception("Critic out of memory on a single request")
            error = (503, "The critic ran out of memory on this request.")
        except Exception as err:  # noqa: BLE001 - the clients get a 500 and the server keeps serving
            log.exception("Critic batch of %d failed", len(jobs))
            error = (500, f"The critic failed: {type(err).__name__}: {err}")
        for i, job in enumerate(jobs):
            if results is not None:
                job.finish(result=results[i])
            else:
                job.finish(error=error)
        seconds = time.perf_counter() - started
        with self._lock:
            self._stats["batches"] += 1
            self._stats["requests"] += len(jobs)
            self._stats["batch_sizes"].append(len(jobs))
        log.info("Critic batch: %d requests in %.3f s", len(jobs), seconds)

    def complete(self, requests: list[ChatRequest]) -> list[dict]:
        """Greedy completions of a batch of requests, in the OpenAI response shape."""
        generation = self.critic.generate([r.conversation for r in requests], max(r.max_tokens for r in requests),
                                          output_logits=any(r.logprobs for r in requests))
        responses = []
        for i, request in enumerate(requests):
            tokens = generation.tokens[i][: request.max_tokens]
            finished = generation.finished[i] and len(generation.tokens[i]) <= request.max_tokens
            logprobs = None
            if request.logprobs:
                rows = torch.log_softmax(generation.logits[i][: len(tokens)], dim=-1)
                logprobs = {"content": [self._logprob_entry(row, token, request.top_logprobs)
                                        for row, token in zip(rows, tokens, strict=True)]}
            prompt = int(generation.prompt_tokens[i])
            responses.append({
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.served_model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.critic.decode(tokens)},
                             "logprobs": logprobs, "finish_reason": "stop" if finished else "length"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)},
            })
        return responses

    def _text(self, token: int) -> str:
        """A token's text; sentencepiece byte-fallback pieces keep their name (`<0x30>`), since decoded they would
        read as the score tokens "0".."9" themselves (InternLM2's tokenizer has both)."""
        if token not in self._token_text:
            tokenizer = self.critic.processor.tokenizer
            piece = tokenizer.convert_ids_to_tokens(token)
            byte_piece = isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
            self._token_text[token] = piece if byte_piece else tokenizer.decode([token])
        return self._token_text[token]

    def _entry(self, token: int, logprob: float) -> dict:
        text = self._text(token)
        logprob = logprob if math.isfinite(logprob) else -9999.0  # JSON has no -inf (vLLM uses the same floor)
        return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode("utf-8"))}

    def _logprob_entry(self, row: torch.Tensor, token: int, top: int) -> dict:
        entry = self._entry(token, float(row[token]))
        k = row.numel() if top < 0 else min(top, row.numel())
        values, ids = torch.topk(row, k) if k else (torch.empty(0), torch.empty(0, dtype=torch.long))
        entry["top_logprobs"] = [self._entry(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        return entry


def serve(cfg: DictConfig) -> None:
    """Serve until SIGINT/SIGTERM (the `python -m coz_train.critic_server` entry point)."""
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    server = CriticServer(cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
