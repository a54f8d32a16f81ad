"""CriticServer end to end with the tiny critic: served scores equal the in-process ones; start-up guards; the CLI."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving import TOKEN_ENV, call, client, free_port, samples, server_cfg, serving

from coz_train.critic_server.app import CriticServer
from coz_train.rewards.critic import BACKENDS, CriticReward, ServerCritic, build_critic_reward, parse_score


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


def test_non_loopback_host_without_token_refuses_to_start(cfg):
    with pytest.raises(ValueError, match=TOKEN_ENV):
        CriticServer(server_cfg(cfg, host="0.0.0.0"))  # refused before anything binds or loads


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
