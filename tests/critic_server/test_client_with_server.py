"""The `server` backend of the critic reward against a real critic server: token, refusals, outages, restarts."""

import threading
import time

import numpy as np
import pytest
from PIL import Image
from serving import TOKEN_ENV, client, samples, server_cfg, serving

from coz_train.critic_server.app import CriticServer
from coz_train.rewards.critic import CriticRequestError, CriticUnavailableError


def test_the_client_sends_the_token_and_does_not_retry_refusals(cfg, critic, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    images, _ = samples(1, seed=3)
    big = [Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))] * 2
    with serving(cfg, critic, max_request_mb=0.05) as srv:
        good = client(cfg, srv.url, retries=3)
        assert len(good.score(images[:1], ["fur"])) == 1
        monkeypatch.setenv(TOKEN_ENV, "wrong")
        bad = client(cfg, srv.url, retries=3)
        with pytest.raises(CriticRequestError, match="401"):
            bad.score(images[:1], ["fur"])
        assert bad.attempts == 1
        monkeypatch.setenv(TOKEN_ENV, "s3cret")
        too_big = client(cfg, srv.url, retries=3)
        with pytest.raises(CriticRequestError, match=f"{srv.url}.*413.*max_request_mb"):
            too_big.score([big], ["fur"])
        assert too_big.attempts == 1


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
    assert url in str(err.value) and "3 attempts" in str(err.value) and "ConnectError" in str(err.value)


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
