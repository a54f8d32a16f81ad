"""The critic VLM over HTTP: an OpenAI-compatible chat-completions endpoint with server-side batching.

    python -m coz_train.critic_server critic=qwen2_5_vl_7b server.port=8000

Endpoints:
- `GET /health` -> `{"status": "ok", "model": <served name>, "scoring": <critic.scoring>, ...}`
- `GET /v1/models` -> the OpenAI model list (one model)
- `POST /v1/chat/completions` -> the OpenAI chat-completions shape, decoded greedily; `logprobs` are
  those of the raw logits (vLLM's default `raw_logprobs`), the numbers the in-process `logits`
  scoring mode uses. The served name is `critic.served_model`, default `critic.name_or_path`.

The pieces, each in the module named for it:
- `protocol.py`: the request and response shapes, their validation, image decoding and the pixel
  and prompt bounds;
- `http.py`: the standard-library server (`http.server.ThreadingHTTPServer`), one thread per
  connection, its guards (token, body size, listen backlog, request deadline, hang-ups);
- `batcher.py`: the thread that gathers up to `server.max_batch` requests (waiting at most
  `server.batch_wait_ms` after the first) and runs them through the model together;
- here: `CriticServer`, which binds, loads the critic and wires the three, and `serve`, the entry
  point. A batch runs through `HFCritic.generate`, the code the in-process critic uses.

Guards at start-up: binds to `server.host` (loopback by default); when `$<server.token_env>` is set
every request needs `Authorization: Bearer <token>`, and a non-loopback host without a token refuses
to start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import torch
from omegaconf import DictConfig

from coz_train.critic_server import http
from coz_train.critic_server.batcher import Batcher, Job
from coz_train.critic_server.http import is_loopback
from coz_train.critic_server.protocol import (
    ChatRequest,
    TokenLogprobs,
    chat_completion,
    check_prompt_tokens,
    parse_chat_request,
)
from coz_train.rewards.critic import HFCritic, critic_device

__all__ = ["CriticServer", "is_loopback", "serve"]

log = logging.getLogger(__name__)


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
        self.httpd = http.bind(server.host, server.port, self)  # bind first: a busy port fails fast
        try:
            self.critic = critic if critic is not None else HFCritic(
                cfg.critic, critic_device(cfg.critic.device), shared_prefix=bool(cfg.perf.critic_prefix))
            if critic is None and cfg.perf.image_cache:
                from coz_train.perf.image_cache import install_image_cache

                install_image_cache(self.critic.processor)
        except BaseException:
            self.httpd.server_close()
            raise
        self.batcher = Batcher(self.complete, server.max_batch, server.batch_wait_ms)
        self._logprobs = TokenLogprobs(self.critic.processor.tokenizer)
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
        return self.batcher.stats

    def start(self) -> CriticServer:
        self.batcher.start()
        self._serving.start()
        log.info("Critic server for %s on %s (max_batch=%d, batch_wait_ms=%d, %s)", self.served_model, self.url,
                 self.cfg.server.max_batch, self.cfg.server.batch_wait_ms,
                 "token required" if self.token else "no token")
        return self

    def stop(self) -> None:
        if not self.batcher.close():  # from here on new requests get a 503
            return
        if self._serving.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.stop()
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
        check_prompt_tokens(request, self.critic.processor.tokenizer, server.max_prompt_tokens)
        return request

    def submit(self, request: ChatRequest) -> Job:
        return self.batcher.submit(request)

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
                rows = torch.log_softmax(generation.logits[i][: len(tokens)], dim=-1)  # [T, V]
                logprobs = self._logprobs.content(rows, tokens, request.top_logprobs)
            responses.append(chat_completion(model=self.served_model, content=self.critic.decode(tokens),
                                             logprobs=logprobs, finished=finished,
                                             prompt_tokens=int(generation.prompt_tokens[i]),
                                             completion_tokens=len(tokens)))
        return responses


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
