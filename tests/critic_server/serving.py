"""Helpers for the critic server tests: a server on a free loopback port, its client, raw calls and requests."""

from __future__ import annotations

import copy
import json
import socket
import urllib.error
import urllib.request
from contextlib import contextmanager

import numpy as np
from PIL import Image

from coz_train.critic_server.app import CriticServer
from coz_train.rewards.critic import ServerCritic, png_data_url

TOKEN_ENV = "COZ_TEST_CRITIC_TOKEN"


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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
