"""The critic server's HTTP layer over loopback: endpoints, token, body size, bursts, slow and vanishing clients."""

import http.client
import json
import logging
import select
import socket
import struct
import threading
import time
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from serving import TOKEN_ENV, call, chat, samples, serving

from coz_train.critic_server.http import is_loopback


def test_health_and_models(cfg, critic):
    with serving(cfg, critic) as srv:
        status, body = call(srv.url + "/health")
        assert status == 200
        assert body["status"] == "ok" and body["model"] == "tiny:qwen2_5_vl@1" and body["scoring"] == "logits"
        assert call(srv.url + "/v1/models")[1]["data"][0]["id"] == "tiny:qwen2_5_vl@1"
        assert call(srv.url + "/nothing")[0] == 404


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("critic.cluster")


def test_token_and_body_size(cfg, critic, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    images, _ = samples(1, seed=3)
    with serving(cfg, critic, max_request_mb=0.05) as srv:
        endpoint = srv.url + "/v1/chat/completions"
        # token: missing or wrong -> 401, right -> 200
        assert call(srv.url + "/health")[0] == 401
        assert call(srv.url + "/health", token="wrong")[0] == 401
        assert call(endpoint, chat(images[0]), token="wrong")[0] == 401
        assert call(srv.url + "/health", token="s3cret")[0] == 200
        # a body announced over the limit is refused from its Content-Length, before it is sent
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            conn.putrequest("POST", "/v1/chat/completions")
            conn.putheader("Authorization", "Bearer s3cret")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(10**9))
            conn.endheaders()
            response = conn.getresponse()
            assert response.status == 413
            assert "max_request_mb" in json.loads(response.read())["error"]["message"]
        finally:
            conn.close()
        # a real oversized body: refused as well, and the client reads the 413 (no reset)
        big = [Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))] * 2
        assert call(endpoint, chat(big), token="s3cret")[0] == 413
        status, body = call(endpoint, raw=b"{not json", token="s3cret")
        assert status == 400 and "not valid JSON" in body["error"]["message"]
        assert call(endpoint, chat(images[0]), token="s3cret")[0] == 200


def test_a_burst_of_100_concurrent_clients_is_served_without_resets(cfg, critic):
    images, texts = samples(1)
    body = json.dumps(chat(images[0], texts[0], logprobs=True, top_logprobs=5)).encode()
    host_port = None
    results: list = []
    start = threading.Barrier(100)

    def one() -> None:
        try:
            conn = http.client.HTTPConnection(*host_port, timeout=120)
            start.wait()
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            results.append(conn.getresponse().status)
            conn.close()
        except Exception as err:  # noqa: BLE001 - the test counts every kind of failure
            results.append(type(err).__name__)

    with serving(cfg, critic, max_batch=16) as srv:
        parts = urlsplit(srv.url)
        host_port = (parts.hostname, parts.port)
        threads = [threading.Thread(target=one) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert results.count(200) == 100, sorted(map(str, results))


def test_a_client_trickling_its_request_is_dropped_at_the_deadline(cfg, critic):
    with serving(cfg, critic, request_deadline_s=1.5) as srv:
        parts = urlsplit(srv.url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        started, closed_after = time.monotonic(), None
        while closed_after is None and time.monotonic() - started < 8:  # a byte every 0.3 s: each read is quick
            try:
                sock.sendall(b" ")
                readable, _, _ = select.select([sock], [], [], 0.3)
                if readable and sock.recv(1 << 16) == b"":
                    closed_after = time.monotonic() - started
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
        sock.close()
        assert closed_after is not None, "the server kept a trickling client past server.request_deadline_s"
        assert closed_after < 5
        assert call(srv.url + "/health")[0] == 200  # and still serves others


def test_a_client_hanging_up_before_its_answer_is_one_info_line(cfg, critic, caplog):
    images, _ = samples(1)
    body = json.dumps(chat(images[0], logprobs=True, top_logprobs=-1)).encode()
    caplog.set_level(logging.INFO, logger="coz_train.critic_server")

    def went_away() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "went away before the answer" in r.getMessage()]

    with serving(cfg, critic, batch_wait_ms=500) as srv:  # the batcher waits: the client is gone before the answer
        parts = urlsplit(srv.url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
        deadline = time.monotonic() + 30
        while not went_away() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert call(srv.url + "/health")[0] == 200  # and still serves others
    lines = went_away()
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].exc_info is None, caplog.text
    assert "ConnectionResetError" in lines[0].getMessage() or "BrokenPipeError" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
