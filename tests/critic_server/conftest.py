"""Fixtures for the critic server tests: the smoke config and one tiny critic shared by every server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serving import TOKEN_ENV  # noqa: E402

from coz_train.rewards.critic import HFCritic, critic_device  # noqa: E402


@pytest.fixture(scope="session")
def cfg(compose_cfg, tmp_path_factory):
    return compose_cfg(["+experiment=smoke"], tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def critic(cfg):
    """One tiny critic in memory, shared by the in-process reference and the servers (it is frozen)."""
    return HFCritic(cfg.critic, critic_device("cpu"))


@pytest.fixture(autouse=True)
def _no_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
