"""The OpenAI chat-completions shape as the critic server speaks it: requests in, completions and errors out.

A request is `messages` whose `content` is a string or a list of `{"type": "text", "text"}` /
`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` parts; `max_tokens` (or
`max_completion_tokens`, default `critic.max_new_tokens`, at most `MAX_TOKENS_CAP`), `logprobs`,
`top_logprobs` (-1 = the whole vocabulary). Decoding is greedy: `temperature` absent or 0, `n` 1,
no streaming. A request naming a model other than the served one is a 404.

Bounds, each checked before the work it saves: more than `server.max_images` images is a 400
(counted before any is decoded); an image over `server.max_image_pixels` or a request over
`server.max_request_pixels` in all is a 413, from each image's header before it is decoded; text
over `server.max_prompt_tokens` tokens is a 413. Images are accepted only as base64 data URLs (the
server fetches nothing); malformed shapes get a 400 saying what is wrong.

The answer carries the raw logits' logprobs (vLLM's default `raw_logprobs`), JSON-safe (-inf floored
at -9999, as vLLM does), with each token's text and UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch

MAX_TOKENS_CAP = 1024  # per request
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


def error_body(status: int, message: str) -> dict:
    """An OpenAI-style error object."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": status}}


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


def check_prompt_tokens(request: ChatRequest, tokenizer: Any, max_prompt_tokens: int) -> None:
    """A 413 when the request's text is over `server.max_prompt_tokens` tokens (a long text holds the batcher)."""
    texts = [part["text"] for message in request.conversation for part in message["content"]
             if part["type"] == "text"]
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    if tokens > max_prompt_tokens:
        raise RequestError(413, f"The request's text is {tokens} tokens, over server.max_prompt_tokens="
                                f"{max_prompt_tokens}.")


def chat_completion(*, model: str, content: str, logprobs: dict | None, finished: bool, prompt_tokens: int,
                    completion_tokens: int) -> dict:
    """One greedy answer in the OpenAI chat-completion shape."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": logprobs, "finish_reason": "stop" if finished else "length"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class TokenLogprobs:
    """The `logprobs.content` entries of an answer: each token's text, logprob and top alternatives.

    Token texts are cached (one batcher thread uses it). Sentencepiece byte-fallback pieces keep their
    name (`<0x30>`), since decoded they would read as the score tokens "0".."9" themselves (InternLM2's
    tokenizer has both).
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}

    def text(self, token: int) -> str:
        if token not in self._text:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            byte_piece = isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
            self._text[token] = piece if byte_piece else self.tokenizer.decode([token])
        return self._text[token]

    def content(self, rows: torch.Tensor, tokens: list[int], top: int) -> dict:
        """`rows`: [T, V] log-probabilities of the answer's T tokens; `top` alternatives each (-1: all V)."""
        return {"content": [self._entry_with_top(row, token, top) for row, token in zip(rows, tokens, strict=True)]}

    def _entry(self, token: int, logprob: float) -> dict:
        text = self.text(token)
        logprob = logprob if math.isfinite(logprob) else -9999.0  # JSON has no -inf (vLLM uses the same floor)
        return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode("utf-8"))}

    def _entry_with_top(self, row: torch.Tensor, token: int, top: int) -> dict:
        entry = self._entry(token, float(row[token]))
        k = row.numel() if top < 0 else min(top, row.numel())
        values, ids = torch.topk(row, k) if k else (torch.empty(0), torch.empty(0, dtype=torch.long))
        entry["top_logprobs"] = [self._entry(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        return entry
