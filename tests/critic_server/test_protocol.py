"""The OpenAI chat-completions shape: request validation and bounds (direct and over HTTP), answer entries."""

import math

import pytest
import torch
from PIL import Image
from serving import call, chat, samples, serving

from coz_train.critic_server.protocol import (
    MAX_TOKENS_CAP,
    RequestError,
    TokenLogprobs,
    error_body,
    parse_chat_request,
)
from coz_train.rewards.critic import png_data_url


def parse(payload, **bounds):
    return parse_chat_request(payload, served_model="m", max_images=2, default_max_tokens=4, **bounds)


def test_a_string_content_is_one_text_part_and_the_defaults_apply():
    request = parse({"messages": [{"role": "user", "content": "hi"}]})
    assert request.conversation == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert (request.max_tokens, request.logprobs, request.top_logprobs) == (4, False, 0)
    request = parse({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9,
                     "logprobs": True, "top_logprobs": -1, "temperature": 0})
    assert (request.max_tokens, request.logprobs, request.top_logprobs) == (9, True, -1)


@pytest.mark.parametrize(("change", "status", "words"), [
    ({"stream": True}, 400, "stream"),
    ({"n": 2}, 400, "n must be 1"),
    ({"temperature": 0.7}, 400, "greedily"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": MAX_TOKENS_CAP + 1}, 400, f"1..{MAX_TOKENS_CAP}"),
    ({"max_tokens": True}, 400, "max_tokens"),
    ({"logprobs": "yes"}, 400, "logprobs must be"),
    ({"logprobs": True, "top_logprobs": -2}, 400, "top_logprobs"),
    ({"model": "other"}, 404, "serves 'm'"),
    ({"messages": []}, 400, "non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0] must be"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x,abc"}}]}]},
     400, "base64 data URL"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,!!"}]}]},
     400, "not valid base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}]},
     400, "cannot be decoded"),
])
def test_malformed_requests_are_refused_saying_what_is_wrong(change, status, words):
    with pytest.raises(RequestError) as err:
        parse({"messages": [{"role": "user", "content": "hi"}], **change})
    assert err.value.status == status and words in err.value.message


def test_image_counts_and_pixels_are_bounded_before_decoding():
    small = png_data_url(Image.new("RGB", (64, 64)))
    part = {"type": "image_url", "image_url": {"url": small}}
    with pytest.raises(RequestError, match="at most 2"):
        parse({"messages": [{"role": "user", "content": [part] * 3}]})
    with pytest.raises(RequestError, match="server.max_image_pixels=4000") as err:
        parse({"messages": [{"role": "user", "content": [part]}]}, max_image_pixels=4000)
    assert err.value.status == 413
    with pytest.raises(RequestError, match="server.max_request_pixels=6000"):
        parse({"messages": [{"role": "user", "content": [part, part]}]}, max_request_pixels=6000)
    request = parse({"messages": [{"role": "user", "content": [part, part]}]}, max_request_pixels=2 * 64 * 64)
    assert [p["image"].size for p in request.conversation[0]["content"]] == [(64, 64), (64, 64)]


def test_error_body_is_openai_shaped():
    assert error_body(413, "too big") == {"error": {"message": "too big", "type": "invalid_request_error", "code": 413}}
    assert error_body(503, "down")["error"]["type"] == "server_error"


def test_logprob_entries_are_json_safe_with_the_top_alternatives(critic):
    entries = TokenLogprobs(critic.processor.tokenizer)
    rows = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, -math.inf], [3.0, 0.0, 0.0, 0.0]]), dim=-1)  # [T=2, V=4]
    content = entries.content(rows, [3, 0], top=2)["content"]
    assert content[0]["logprob"] == -9999.0 and [e["logprob"] for e in content[0]["top_logprobs"]] == pytest.approx(
        [float(rows[0, 2]), float(rows[0, 1])])
    assert content[1]["token"] == entries.text(0) and content[1]["bytes"] == list(entries.text(0).encode())
    assert len(entries.content(rows, [3, 0], top=-1)["content"][0]["top_logprobs"]) == 4  # -1: the whole vocabulary


def test_validation_over_http(cfg, critic):
    images, _ = samples(3, seed=3)
    with serving(cfg, critic, max_images=2) as srv:
        endpoint = srv.url + "/v1/chat/completions"
        status, body = call(endpoint, chat(images[0] + images[1][:1]))
        assert status == 400 and "at most 2" in body["error"]["message"]
        status, body = call(endpoint, {"messages": "hello"})
        assert status == 400 and "messages" in body["error"]["message"]
        status, body = call(endpoint, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "http://example.com/a.png"}}]}]})
        assert status == 400 and "data URL" in body["error"]["message"]
        status, body = call(endpoint, chat(images[0], logprobs=False, top_logprobs=5))
        assert status == 400 and "logprobs" in body["error"]["message"]
        status, body = call(endpoint, chat(images[0], model="someone/else"))
        assert status == 404 and "tiny:qwen2_5_vl@1" in body["error"]["message"]
        status, body = call(endpoint, chat(images[0], logprobs=True, top_logprobs=3))
        assert status == 200 and len(body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 3


def test_images_and_texts_over_the_bounds_are_refused_before_decoding(cfg, critic):
    blank = Image.new("RGB", (3000, 3000))  # a few KB as PNG, 9M pixels decoded
    small = Image.new("RGB", (64, 64))
    with serving(cfg, critic, max_image_pixels=4_000_000, max_request_pixels=6_000, max_prompt_tokens=50) as srv:
        status, body = call(srv.url + "/v1/chat/completions", chat([blank]))
        assert status == 413 and "server.max_image_pixels=4000000" in body["error"]["message"]
        status, body = call(srv.url + "/v1/chat/completions", chat([small, small]))
        assert status == 413 and "server.max_request_pixels=6000" in body["error"]["message"]
        status, body = call(srv.url + "/v1/chat/completions", chat([small], text="fur " * 400))
        assert status == 413 and "server.max_prompt_tokens=50" in body["error"]["message"]
        assert call(srv.url + "/v1/chat/completions", chat([small]))[0] == 200
