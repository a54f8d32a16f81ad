"""The critic server client (`critic.backend=server`) against scripted HTTP servers: retries, refusals, transport."""

import copy
import json
import logging
import math
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from coz_train.rewards.critic import (
    CriticRequestError,
    CriticUnavailableError,
    ServerCritic,
    build_critic_reward,
    expected_score,
)


@pytest.fixture(scope="module")
def cfg(compose_cfg, tmp_path_factory):
    return compose_cfg(["+experiment=smoke"], tmp_path_factory.mktemp("run"))


def server_critic(cfg, url, **critic):
    section = copy.deepcopy(cfg.critic)
    section.backend, section.url, section.token_env = "server", url, "COZ_TEST_UNSET_TOKEN"
    for key, value in critic.items():
        section[key] = value
    return ServerCritic(section, backoff_s=0.01)


def pair():
    rng = np.random.default_rng(6)
    return [[Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]]


def test_expected_score_from_top_logprobs():
    top = [{"token": "the", "logprob": -0.1}, {"token": "7", "logprob": math.log(0.3)},
           {"token": "2", "logprob": math.log(0.1)}, {"token": "7", "logprob": -50.0}, {"token": "10", "logprob": -1.0}]
    assert expected_score(top, 9) == pytest.approx((7 * 0.3 + 2 * 0.1) / 0.4)  # renormalised, duplicates ignored
    assert expected_score([{"token": "yes", "logprob": -0.1}], 9) is None  # no score token: None, never 0
    assert expected_score([], 9) is None


def test_server_backend_needs_a_url(cfg):
    section = copy.deepcopy(cfg.critic)
    section.backend, section.url = "server", None
    with pytest.raises(ValueError, match="critic.url"):
        ServerCritic(section)


def test_trainer_side_critic_prefix_with_a_server_points_to_the_server(cfg):
    reward_cfg = copy.deepcopy(cfg)
    reward_cfg.critic.backend, reward_cfg.critic.url = "server", "http://127.0.0.1:9"
    reward_cfg.perf.critic_prefix = True
    with pytest.raises(ValueError, match="start the critic server with perf.critic_prefix=true"):
        build_critic_reward({}, reward_cfg)


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
        self.server.peers.add(self.client_address)
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


class _KeepAlive(_Scripted):
    protocol_version = "HTTP/1.1"


@contextmanager
def scripted(script, handler=_Scripted):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.script, httpd.seen, httpd.peers = list(script), 0, set()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_retries_on_5xx_and_timeouts_but_not_on_4xx(cfg):
    images = pair()
    kwargs = dict(scoring="generate", score_max=9, timeout_s=0.3)
    with scripted([503, 502, "ok"]) as (httpd, url):
        remote = server_critic(cfg, url, retries=3, **kwargs)
        assert remote.score(images, ["fur"]) == [7.0]
        assert remote.attempts == 3 and httpd.seen == 3
    with scripted(["slow", "ok"]) as (httpd, url):
        remote = server_critic(cfg, url, retries=3, **kwargs)
        assert remote.score(images, ["fur"]) == [7.0]
        assert remote.attempts == 2
    with scripted([400]) as (httpd, url):
        remote = server_critic(cfg, url, retries=3, **kwargs)
        with pytest.raises(CriticRequestError, match="scripted 400"):
            remote.score(images, ["fur"])
        assert remote.attempts == 1
    with scripted([500, 500]) as (httpd, url):
        remote = server_critic(cfg, url, retries=1, **kwargs)
        with pytest.raises(CriticUnavailableError, match="2 attempts.*HTTP 500"):
            remote.score(images, ["fur"])
    with scripted([]) as (httpd, url):  # a server without logprobs cannot do logits scoring
        remote = server_critic(cfg, url, retries=0, scoring="logits")
        with pytest.raises(CriticRequestError, match="no logprobs"):
            remote.score(images, ["fur"])


def test_an_unreachable_server_is_named_in_the_warning_and_the_error(cfg, caplog):
    with scripted([]) as (_, url):
        pass  # the port is free again: nothing listens there
    with caplog.at_level(logging.WARNING, logger="coz_train.rewards.critic.client"):
        remote = server_critic(cfg, url, retries=1, scoring="generate")
    assert f"The critic server at {url} is not answering yet (ConnectError" in caplog.text
    with pytest.raises(CriticUnavailableError, match=f"{url}/v1/chat/completions is unavailable: 2 attempts"):
        remote.score(pair(), ["fur"])


def test_connections_are_kept_alive_and_proxies_in_the_environment_ignored(cfg, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing there: a proxied request would fail
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with scripted([], handler=_KeepAlive) as (httpd, url):
        remote = server_critic(cfg, url, retries=0, scoring="generate", concurrency=1)
        assert remote.score(pair() * 5, ["fur"] * 5) == [7.0] * 5
        assert httpd.seen == 5 and len(httpd.peers) == 1  # one connection for all five requests
        remote.close()


def test_a_call_past_the_reward_deadline_stops_retrying(cfg, caplog):
    """reward_failure.deadline_s gives up on a call whose requests keep failing: the client's thread then makes no
    further attempt (and logs no more failures) instead of retrying in the background."""
    from coz_train.rewards.guard import GuardedReward, RewardFailedError, UpdateGuard

    with scripted([503] * 200) as (httpd, url):
        remote = server_critic(cfg, url, scoring="generate", score_max=9, timeout_s=2, retries=100)
        remote.backoff_s = 0.05

        def critic_reward(prompts=None, completions=None, **kwargs):
            return remote.score(pair() * len(completions), completions)

        reward = GuardedReward(critic_reward, UpdateGuard("stop"), retries=0, backoff_s=0, deadline_s=0.6)
        with caplog.at_level(logging.WARNING), pytest.raises(RewardFailedError, match="deadline_s=0.6"):
            reward(prompts=["p"], completions=["fur"])
        at_deadline = httpd.seen
        assert at_deadline >= 2  # it was retrying
        time.sleep(1.5)
        assert httpd.seen <= at_deadline + 1  # at most the attempt already on the wire
        failures = [r for r in caplog.records if "Critic request" in r.getMessage()]
        time.sleep(0.3)
        assert [r for r in caplog.records if "Critic request" in r.getMessage()] == failures
    # control: without a deadline the same client goes on retrying
    with scripted([503] * 8) as (httpd, url):
        remote = server_critic(cfg, url, scoring="generate", score_max=9, timeout_s=2, retries=7)
        remote.backoff_s = 0.01
        with pytest.raises(CriticUnavailableError, match="8 attempts"):
            remote.score(pair(), ["fur"])
        assert httpd.seen == 8
