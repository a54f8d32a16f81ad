"""Shared fixtures: offline, single-threaded, configs composed with Hydra into a temp folder."""

from __future__ import annotations

import os

# Before torch is imported anywhere: two threads on a 2-core machine stall at random.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from coz_train.config import config_dir, register_configs  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tiny models and zoom-pair caches go to a per-session folder, not the user's cache."""
    os.environ["COZ_TRAIN_CACHE"] = str(tmp_path_factory.mktemp("coz_train_cache"))


def compose_config(overrides: list[str], output_dir: Path):
    GlobalHydra.instance().clear()
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])


@pytest.fixture(scope="session")
def compose_cfg():
    """compose(overrides, output_dir) -> DictConfig; for module- or session-scoped fixtures."""
    return compose_config


@pytest.fixture
def make_config(tmp_path: Path):
    """make_config("+experiment=smoke", "grpo.max_steps=2") -> a composed DictConfig writing to tmp_path."""

    def make(*overrides: str):
        return compose_config(list(overrides), tmp_path / "run")

    return make


class ModelLoadStarted(Exception):
    """Raised by `no_model_loads` when training setup gets as far as loading data or weights."""


@pytest.fixture
def no_model_loads(monkeypatch):
    """build_trainer stops with ModelLoadStarted where it would start loading data, processor or weights."""
    import coz_train.train as train_module

    def refuse(*args, **kwargs):
        raise ModelLoadStarted

    for name in ("build_zoom_dataset", "load_processor", "load_vlm"):
        monkeypatch.setattr(train_module, name, refuse)
    return ModelLoadStarted


@pytest.fixture(scope="session")
def critic_cfg(compose_cfg, tmp_path_factory):
    """The `critic` section of `+experiment=smoke` (the tiny Qwen2.5-VL critic, hf backend)."""
    return compose_cfg(["+experiment=smoke"], tmp_path_factory.mktemp("critic-run")).critic


@pytest.fixture
def critic(critic_cfg):
    """A fresh plain hf critic on the CPU per test (tests change its generation config); test folders with other
    critics define their own."""
    from coz_train.rewards.critic import HFCritic, critic_device

    return HFCritic(critic_cfg, critic_device("cpu"))
