"""`python -m coz_train.critic_server critic=internvl2_5_8b` serves the converted InternVL2.5 critic (tiny stand-in):
the scores through HTTP equal the in-process ones, in both scoring modes."""

import copy

import numpy as np
import pytest
from PIL import Image

from coz_train.critic_server.app import CriticServer
from coz_train.rewards.critic import HFCritic, ServerCritic, critic_device, parse_score


@pytest.fixture(scope="module")
def cfg(compose_cfg, tmp_path_factory):
    return compose_cfg(["+experiment=smoke", "critic=internvl2_5_8b", "critic.name_or_path=tiny:internvl2_5",
                        "critic.dtype=float32", "critic.device=cpu", "critic.scoring=logits", "critic.score_max=9",
                        "server.port=0"], tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def critic(cfg):
    return HFCritic(cfg.critic, critic_device("cpu"))


def samples():
    rng = np.random.default_rng(3)
    images = [[Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((500, 700), (96, 128))]
              for _ in range(3)]
    return images, ["fur", "a red car on a wet street", "sky"]


def client(cfg, url, **critic):
    section = copy.deepcopy(cfg.critic)
    section.backend, section.url = "server", url
    for key, value in critic.items():
        section[key] = value
    return ServerCritic(section, backoff_s=0.01, top_logprobs=-1)


def test_served_internvl_critic_scores_as_in_process(cfg, critic, monkeypatch):
    monkeypatch.delenv(cfg.server.token_env, raising=False)
    assert type(critic.model).__name__ == "InternVLForConditionalGeneration"
    images, texts = samples()
    local = critic.score(images, texts)
    assert all(s is not None and 0.0 <= s <= 9.0 for s in local)
    answers = [critic.decode(t) for t in critic.generate([critic.conversation(i, t) for i, t in
                                                          zip(images, texts, strict=True)], 4).tokens]
    server = CriticServer(cfg, critic=critic)
    srv = server.start()
    try:
        assert client(cfg, srv.url).score(images, texts) == pytest.approx(local, abs=1e-4)
        generated = client(cfg, srv.url, scoring="generate", max_new_tokens=4)
        assert generated.score(images, texts) == [parse_score(a, 9) for a in answers]
    finally:
        server.stop()
