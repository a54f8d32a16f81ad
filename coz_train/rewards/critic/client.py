"""The `server` backend: a client of an OpenAI-compatible chat-completions critic server.

Transport: one `httpx.Client` per critic, shared by the `critic.concurrency` worker threads: a pool
of as many keep-alive connections (vLLM and SGLang keep them open; our server closes each after its
answer), `critic.timeout_s` for each of connect, write, read and waiting for a pooled connection,
never a proxy from the environment (`trust_env=False`: the critic is on the cluster's own network),
and the system's certificate authorities for https, as Python's own `ssl` uses them.

Not the `openai` client: it is not a dependency of this project (nor installed in its environment),
and it is built on httpx itself, adding under the policy stated here a second retry loop of its own
(`max_retries`, default 2, with its own backoff) and a timeout default of its own (600 s), both of
which would have to be switched off to keep one policy. The critic sends one POST and reads the JSON
answer (the score tokens' `logprobs` included) itself; httpx is that layer.

Retries: connection errors, timeouts and 5xx are retried `critic.retries` times with exponential
backoff (`backoff_s` x 1, 2, 4 ..., at most 60 s), then `CriticUnavailableError` naming the URL, the
attempts and the last error; 4xx and answers that are not chat completions raise
`CriticRequestError` at once. The whole reward call, these retries included, runs inside one
`reward_failure.deadline_s` (`coz_train.rewards.guard`), which abandons a call still running then.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import ssl
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import httpx
from omegaconf import DictConfig

from coz_train.rewards.critic.common import instruction_text, parse_score
from coz_train.rewards.guard import abandoned

log = logging.getLogger(__name__)


class CriticUnavailableError(RuntimeError):
    """The critic server could not be reached (or kept failing) after every retry."""


class CriticRequestError(RuntimeError):
    """The critic server refused a request (4xx) or answered something that is not a chat completion."""


def png_data_url(image: Any) -> str:
    """A PIL image (or an HxW[xC] uint8 array) as a lossless `data:image/png;base64,...` URL."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        import numpy as np

        image = Image.fromarray(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def expected_score(top_logprobs: list[dict], score_max: int) -> float | None:
    """E[score] over the score tokens "0".."score_max" among `top_logprobs`, renormalised; None if none is there."""
    wanted = {str(v): v for v in range(score_max + 1)}
    found: dict[int, float] = {}
    for entry in top_logprobs:
        value = wanted.get(entry.get("token")) if isinstance(entry, dict) else None
        logprob = entry.get("logprob") if value is not None else None
        if value is not None and value not in found and isinstance(logprob, (int, float)) and math.isfinite(logprob):
            found[value] = float(logprob)
    if not found:
        return None
    top = max(found.values())
    weights = {v: math.exp(lp - top) for v, lp in found.items()}
    return sum(v * w for v, w in weights.items()) / sum(weights.values())


class _Retryable(Exception):
    pass


class ServerCritic:
    """A critic behind an OpenAI-compatible chat-completions server (see the module docstring)."""

    DEFAULT_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs (and OpenAI's maximum)

    def __init__(self, cfg: DictConfig, device: Any = None, *, backoff_s: float = 1.0, top_logprobs: int | None = None):
        if not cfg.url:
            raise ValueError(
                "critic.backend=server needs critic.url, the critic server's address "
                "(e.g. critic.url=http://127.0.0.1:8000; start one with python -m coz_train.critic_server)."
            )
        url = str(cfg.url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"critic.url='{cfg.url}' must start with http:// or https://.")
        self.base_url = url.removesuffix("/chat/completions").removesuffix("/v1")  # accept .../v1[/chat/completions]
        self.url = self.base_url + "/v1/chat/completions"
        self.cfg, self.backoff_s = cfg, backoff_s
        self.model_name = cfg.served_model or cfg.name_or_path
        if cfg.scoring == "logits" and cfg.score_max > 9:
            log.warning("critic.scoring=logits over a server reads the scores 0..%d as single tokens; tokenizers "
                        "that split numbers into digits (Qwen, InternLM) never produce the scores above 9.",
                        cfg.score_max)
        if top_logprobs is None:
            top_logprobs = cfg.top_logprobs if "top_logprobs" in cfg else None
        self.top_logprobs = max(self.DEFAULT_TOP_LOGPROBS, cfg.score_max + 1) if top_logprobs is None else top_logprobs
        token = os.environ.get(cfg.token_env) if cfg.token_env else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        workers = max(1, cfg.concurrency)
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(cfg.timeout_s), trust_env=False,  # direct, never via a proxy
            limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
            verify=ssl.create_default_context())  # the system's CAs (httpx's default would be certifi's)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="critic-client")
        self._lock = threading.Lock()
        self.attempts = 0  # HTTP attempts made, retries included
        self._probe()

    def _probe(self) -> None:
        """One quick GET /health: a warning (not an error) if the server is not up yet."""
        try:
            response = self._http.get(self.base_url + "/health", timeout=min(5.0, self.cfg.timeout_s))
        except httpx.TransportError as err:
            log.warning("The critic server at %s is not answering yet (%s: %s); requests will retry.", self.base_url,
                        type(err).__name__, err)
            return
        if not response.is_success:
            log.warning("The critic server at %s answers GET /health with HTTP %d: %s", self.base_url,
                        response.status_code, _error_message(response))
            return
        body = response.content
        try:
            model = json.loads(body).get("model") if body.lstrip().startswith(b"{") else None  # vLLM: empty body
        except ValueError:
            log.warning("The critic server at %s answers GET /health with something that is not a JSON object: %r",
                        self.base_url, body[:200])
            return
        if model is not None and model != self.model_name:
            log.warning("The critic server at %s serves '%s', but requests name '%s' (critic.served_model).",
                        self.base_url, model, self.model_name)

    def payload(self, images: list, text: str) -> dict:
        content = [{"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in images]
        content.append({"type": "text", "text": instruction_text(self.cfg, text)})
        body: dict[str, Any] = {"model": self.model_name, "messages": [{"role": "user", "content": content}],
                                "temperature": 0}
        if self.cfg.scoring == "logits":
            body.update(max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
        else:
            body.update(max_tokens=self.cfg.max_new_tokens)
        return body

    def _post(self, data: bytes) -> dict:
        try:
            response = self._http.post(self.url, content=data)
        except httpx.TransportError as err:  # refused, reset, timed out, closed mid-response
            raise _Retryable(f"{type(err).__name__}: {err}") from None
        except httpx.DecodingError as err:
            raise CriticRequestError(f"The critic server at {self.url} answered a body that cannot be decoded: "
                                     f"{err}") from None
        if response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}: {_error_message(response)}")
        if not response.is_success:
            raise CriticRequestError(f"The critic server at {self.url} refused the request: HTTP "
                                     f"{response.status_code}: {_error_message(response)}")
        try:
            return json.loads(response.content)
        except ValueError:
            raise CriticRequestError(f"The critic server at {self.url} answered with something that is not JSON: "
                                     f"{response.content[:200]!r}") from None

    def request(self, body: dict, given_up: threading.Event | None = None) -> dict:
        """POST one chat completion, retrying connection errors, timeouts and 5xx with exponential backoff; no further
        attempt once `given_up` is set (the reward call's deadline passed: `coz_train.rewards.guard.abandoned`)."""
        data = json.dumps(body).encode()
        given_up = given_up or threading.Event()
        attempts, last = 1 + max(0, self.cfg.retries), None
        for attempt in range(attempts):
            if attempt and given_up.wait(min(60.0, self.backoff_s * 2 ** (attempt - 1))):
                break
            if given_up.is_set():
                break
            with self._lock:
                self.attempts += 1
            try:
                return self._post(data)
            except _Retryable as err:
                last = err
                if given_up.is_set():
                    break
                log.warning("Critic request to %s failed (attempt %d/%d): %s", self.url, attempt + 1, attempts, err)
        if given_up.is_set():
            raise CriticUnavailableError(f"The request to the critic server at {self.url} was given up: the reward "
                                         f"call's deadline (reward_failure.deadline_s) passed; last error: {last}")
        raise CriticUnavailableError(
            f"The critic server at {self.url} is unavailable: {attempts} attempts failed "
            f"(critic.retries={self.cfg.retries}, critic.timeout_s={self.cfg.timeout_s}); last error: {last}"
        )

    def score_response(self, response: dict) -> float | None:
        try:
            choice = response["choices"][0]
            if self.cfg.scoring == "generate":
                return parse_score(choice["message"].get("content") or "", self.cfg.score_max)
            logprobs = choice.get("logprobs")
            if not logprobs or logprobs.get("content") is None:
                raise CriticRequestError(
                    f"The critic server at {self.url} returned no logprobs: it does not support them; "
                    "use critic.scoring=generate.")
            tokens = logprobs["content"]
            return expected_score(tokens[0].get("top_logprobs") or [], self.cfg.score_max) if tokens else None
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise CriticRequestError(f"The critic server at {self.url} answered an unexpected shape ({err!r}): "
                                     f"{json.dumps(response)[:300]}") from None

    def _score_one(self, images: list, text: str, given_up: threading.Event | None) -> float | None:
        return self.score_response(self.request(self.payload(images, text), given_up))

    def score(self, images: list[list], texts: list[str]) -> list[float | None]:
        given_up = abandoned()  # the pool's threads do not see the reward call's context: handed over explicitly
        futures = [self._pool.submit(self._score_one, imgs, text, given_up)
                   for imgs, text in zip(images, texts, strict=True)]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()
        return [future.result() for future in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()


def _error_message(response: httpx.Response) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body."""
    raw = response.content
    try:
        body = json.loads(raw)
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message") if isinstance(error, dict) else error
        return str(message if message is not None else body)[:500]
    except ValueError:
        return raw[:300].decode("utf-8", "replace") or response.reason_phrase
