"""The critic server over loopback with the tiny critic, and the `server` backend of the critic reward."""

import copy
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from coz_train.critic_server.app import CriticServer, is_loopback
from coz_train.rewards.critic import (
    BACKENDS,
    CriticRequestError,
    CriticReward,
    CriticUnavailableError,
    HFCritic,
    ServerCritic,
    build_critic_reward,
    critic_device,
    expected_score,
    parse_score,
    png_data_url,
)

TOKEN_ENV = "COZ_TEST_CRITIC_TOKEN"


@pytest.fixture(scope="module")
def cfg(compose_cfg, tmp_path_factory):
    return compose_cfg(["+experiment=smoke"], tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def critic(cfg):
    """One tiny critic in memory, shared by the in-process reference and the servers (it is frozen)."""
    return HFCritic(cfg.critic, critic_device("cpu"))


@pytest.fixture(autouse=True)
def _no_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def samples(n, seed=0, size=64):
    rng = np.random.default_rng(seed)
    images = [[Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2)]
              for _ in range(n)]
    texts = ["fur", "bricks", "a red car on a wet street", "sky", "x", "leaves and branches"][:n]
    return images, texts


def server_cfg(cfg, **server):
    out = copy.deepcopy(cfg)
    out.server.port = 0
    out.server.token_env = TOKEN_ENV
    for key, value in server.items():
        out.server[key] = value
    return out


@contextmanager
def serving(cfg, critic, **server):
    srv = CriticServer(server_cfg(cfg, **server), critic=critic)
    try:
        yield srv.start()
    finally:
        srv.stop()


def client(cfg, url, top_logprobs=None, backoff_s=0.01, **critic):
    section = copy.deepcopy(cfg.critic)
    section.backend, section.url, section.token_env = "server", url, TOKEN_ENV
    for key, value in critic.items():
        section[key] = value
    return ServerCritic(section, backoff_s=backoff_s, top_logprobs=top_logprobs)


def call(url, body=None, token=None, raw=None):
    """(status, JSON body) of a GET (body None) or POST to url."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def chat(images, text="Rate it.", **extra):
    content = [{"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in images]
    return {"messages": [{"role": "user", "content": [*content, {"type": "text", "text": text}]}], "max_tokens": 1,
            **extra}


def test_health_and_models(cfg, critic):
    with serving(cfg, critic) as srv:
        status, body = call(srv.url + "/health")
        assert status == 200
        assert body["status"] == "ok" and body["model"] == "tiny:qwen2_5_vl@1" and body["scoring"] == "logits"
        assert call(srv.url + "/v1/models")[1]["data"][0]["id"] == "tiny:qwen2_5_vl@1"
        assert call(srv.url + "/nothing")[0] == 404


def test_logits_scores_match_the_in_process_critic(cfg, critic):
    images, texts = samples(5)
    local = critic.score(images, texts)
    with serving(cfg, critic) as srv:
        remote = client(cfg, srv.url, top_logprobs=-1).score(images, texts)  # the whole distribution: exact
        assert remote == pytest.approx(local, abs=1e-4)
        # the reward built from config goes through the server backend
        reward_cfg = copy.deepcopy(cfg)
        reward_cfg.critic.backend, reward_cfg.critic.url = "server", srv.url
        reward = build_critic_reward({}, reward_cfg)
        assert isinstance(reward, CriticReward) and isinstance(reward.backend, ServerCritic)
        assert reward.backend.payload(images[0], "fur")["top_logprobs"] == 20  # vLLM's default cap
    assert BACKENDS["server"] is ServerCritic


def test_server_with_critic_prefix_scores_like_the_plain_critic(cfg, critic):
    images, texts = samples(1)
    group = images * 4  # four candidates for one pair of images, as a GRPO group sends them
    texts = ["fur", "bricks", "a red car on a wet street", "sky"]
    local = critic.score(group, texts)
    shared = copy.deepcopy(cfg)
    shared.perf.critic_prefix = True
    srv = CriticServer(server_cfg(shared), critic=None)  # loads its own critic, with the shared prefix
    try:
        srv.start()
        assert srv.critic.shared_prefix
        remote = client(cfg, srv.url, top_logprobs=-1).score(group, texts)
        assert remote == pytest.approx(local, abs=1e-4)
    finally:
        srv.stop()


def test_trainer_side_critic_prefix_with_a_server_points_to_the_server(cfg):
    reward_cfg = copy.deepcopy(cfg)
    reward_cfg.critic.backend, reward_cfg.critic.url = "server", "http://127.0.0.1:9"
    reward_cfg.perf.critic_prefix = True
    with pytest.raises(ValueError, match="start the critic server with perf.critic_prefix=true"):
        build_critic_reward({}, reward_cfg)


def test_expected_score_from_top_logprobs():
    import math

    top = [{"token": "the", "logprob": -0.1}, {"token": "7", "logprob": math.log(0.3)},
           {"token": "2", "logprob": math.log(0.1)}, {"token": "7", "logprob": -50.0}, {"token": "10", "logprob": -1.0}]
    assert expected_score(top, 9) == pytest.approx((7 * 0.3 + 2 * 0.1) / 0.4)  # renormalised, duplicates ignored
    assert expected_score([{"token": "yes", "logprob": -0.1}], 9) is None  # no score token: None, never 0
    assert expected_score([], 9) is None


def test_generate_mode_matches_and_unparsable_is_none(cfg, critic):
    images, texts = samples(4, seed=1)
    max_new = cfg.critic.max_new_tokens
    answers = [critic.decode(t) for t in
               critic.generate([critic.conversation(i, t) for i, t in zip(images, texts, strict=True)], max_new).tokens]
    local = [parse_score(a, cfg.critic.score_max) for a in answers]
    with serving(cfg, critic) as srv:
        remote_client = client(cfg, srv.url, scoring="generate")
        assert remote_client.score(images, texts) == local
        contents = [remote_client.request(remote_client.payload(i, t))["choices"][0]["message"]["content"]
                    for i, t in zip(images, texts, strict=True)]
    assert contents == answers
    assert [s is None for s in local] == [parse_score(c, cfg.critic.score_max) is None for c in contents]


def test_concurrent_requests_are_batched(cfg, critic):
    images, texts = samples(6, seed=2)
    with serving(cfg, critic, max_batch=4, batch_wait_ms=1000) as srv:  # generous: all 6 arrive in time
        scores = client(cfg, srv.url, top_logprobs=-1, concurrency=6).score(images, texts)
        stats = srv.stats
    assert scores == pytest.approx(critic.score(images, texts), abs=1e-4)
    assert stats["requests"] == 6
    assert 2 <= stats["batches"] <= 3
    assert max(stats["batch_sizes"]) <= 4


def test_limits_validation_and_token(cfg, critic, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    images, _ = samples(3, seed=3)
    with serving(cfg, critic, max_request_mb=0.05, max_images=2) as srv:
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
        # a real oversized body: refused as well, and the client says so without retrying
        big = [Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))] * 2
        status, body = call(endpoint, chat(big), token="s3cret")
        assert status == 413
        # too many images, bad JSON, bad shapes, remote image URLs, another model
        status, body = call(endpoint, chat(images[0] + images[1][:1]), token="s3cret")
        assert status == 400 and "at most 2" in body["error"]["message"]
        status, body = call(endpoint, raw=b"{not json", token="s3cret")
        assert status == 400 and "not valid JSON" in body["error"]["message"]
        status, body = call(endpoint, {"messages": "hello"}, token="s3cret")
        assert status == 400 and "messages" in body["error"]["message"]
        status, body = call(endpoint, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "http://example.com/a.png"}}]}]}, token="s3cret")
        assert status == 400 and "data URL" in body["error"]["message"]
        status, body = call(endpoint, chat(images[0], logprobs=False, top_logprobs=5), token="s3cret")
        assert status == 400 and "logprobs" in body["error"]["message"]
        status, body = call(endpoint, chat(images[0], model="someone/else"), token="s3cret")
        assert status == 404 and "tiny:qwen2_5_vl@1" in body["error"]["message"]
        status, body = call(endpoint, chat(images[0], logprobs=True, top_logprobs=3), token="s3cret")
        assert status == 200 and len(body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 3

        # the client sends the token from critic.token_env; 4xx are not retried
        good = client(cfg, srv.url, retries=3)
        assert len(good.score(images[:1], ["fur"])) == 1
        monkeypatch.setenv(TOKEN_ENV, "wrong")
        bad = client(cfg, srv.url, retries=3)
        with pytest.raises(CriticRequestError, match="401"):
            bad.score(images[:1], ["fur"])
        assert bad.attempts == 1
        monkeypatch.setenv(TOKEN_ENV, "s3cret")
        too_big = client(cfg, srv.url, retries=3)
        with pytest.raises(CriticRequestError, match="413"):
            too_big.score([big], ["fur"])
        assert too_big.attempts == 1


def test_non_loopback_host_without_token_refuses_to_start(cfg, monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("critic.cluster")
    with pytest.raises(ValueError, match=TOKEN_ENV):
        CriticServer(server_cfg(cfg, host="0.0.0.0"))  # refused before anything binds or loads


def test_server_backend_needs_a_url(cfg):
    section = copy.deepcopy(cfg.critic)
    section.backend, section.url = "server", None
    with pytest.raises(ValueError, match="critic.url"):
        ServerCritic(section)


def test_stopped_server_retries_then_unavailable(cfg, critic):
    images, texts = samples(1, seed=4)
    with serving(cfg, critic) as srv:
        remote = client(cfg, srv.url, retries=2)
        assert len(remote.score(images, texts)) == 1
        url = srv.url
    before = remote.attempts
    with pytest.raises(CriticUnavailableError) as err:
        remote.score(images, texts)
    assert remote.attempts - before == 3  # the first try and critic.retries=2 retries
    assert url in str(err.value) and "3 attempts" in str(err.value)


def test_server_back_within_the_retry_window(cfg, critic):
    images, texts = samples(2, seed=5)
    with serving(cfg, critic) as srv:
        port, url = srv.port, srv.url
    restarted: list[CriticServer] = []

    def restart():
        time.sleep(0.3)
        restarted.append(CriticServer(server_cfg(cfg, port=port), critic=critic).start())

    remote = client(cfg, url, top_logprobs=-1, retries=6, backoff_s=0.1)  # retries over ~6 s
    thread = threading.Thread(target=restart)
    thread.start()
    try:
        scores = remote.score(images, texts)
    finally:
        thread.join()
        for srv in restarted:
            srv.stop()
    assert scores == pytest.approx(critic.score(images, texts), abs=1e-4)
    assert remote.attempts > 2  # it failed at first, then got through


class _Scripted(BaseHTTPRequestHandler):
    """A fake chat-completions server answering from a script: an int status, 'slow', or 'ok'."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        step = self.server.script.pop(0) if self.server.script else "ok"
        self.server.seen += 1
        if step == "slow":
            time.sleep(1.0)
            step = "ok"
        status = 200 if step == "ok" else step
        body = {"choices": [{"message": {"content": "Score: 7"}}]} if status == 200 else {
            "error": {"message": f"scripted {status}"}}
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass


@contextmanager
def scripted(script):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    httpd.daemon_threads = True
    httpd.script, httpd.seen = list(script), 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_retries_on_5xx_and_timeouts_but_not_on_4xx(cfg):
    images, _ = samples(1, seed=6)
    kwargs = dict(scoring="generate", score_max=9, timeout_s=0.3)
    with scripted([503, 502, "ok"]) as (httpd, url):
        remote = client(cfg, url, retries=3, **kwargs)
        assert remote.score(images, ["fur"]) == [7.0]
        assert remote.attempts == 3 and httpd.seen == 3
    with scripted(["slow", "ok"]) as (httpd, url):
        remote = client(cfg, url, retries=3, **kwargs)
        assert remote.score(images, ["fur"]) == [7.0]
        assert remote.attempts == 2
    with scripted([400]) as (httpd, url):
        remote = client(cfg, url, retries=3, **kwargs)
        with pytest.raises(CriticRequestError, match="scripted 400"):
            remote.score(images, ["fur"])
        assert remote.attempts == 1
    with scripted([500, 500]) as (httpd, url):
        remote = client(cfg, url, retries=1, **kwargs)
        with pytest.raises(CriticUnavailableError, match="2 attempts.*HTTP 500"):
            remote.score(images, ["fur"])
    with scripted([]) as (httpd, url):  # a server without logprobs cannot do logits scoring
        remote = client(cfg, url, retries=0, scoring="logits")
        with pytest.raises(CriticRequestError, match="no logprobs"):
            remote.score(images, ["fur"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_serves_and_stops_on_sigterm(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(TOKEN_ENV, None)
    env.pop("COZ_CRITIC_TOKEN", None)
    base = [sys.executable, "-m", "coz_train.critic_server", "+experiment=smoke", f"hydra.run.dir={tmp_path}"]
    refused = subprocess.run([*base, "server.host=0.0.0.0"], env=env, capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
    assert refused.returncode != 0 and "COZ_CRITIC_TOKEN" in refused.stderr + refused.stdout

    port = free_port()
    proc = subprocess.Popen([*base, f"server.port={port}"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = call(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200 and body["model"] == "tiny:qwen2_5_vl@1"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert "stopped" in output
    assert Path(tmp_path, "critic_server.log").is_file()


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
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 8:
            try:
                sock.sendall(b" ")
                if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            time.sleep(0.3)
        sock.close()
        assert closed, "the server kept a trickling client past server.request_deadline_s"
        assert call(srv.url + "/health")[0] == 200  # and still serves others


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
