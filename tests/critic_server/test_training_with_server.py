"""GRPO with the critic behind the server: it trains; a server that stops mid-run is retried, then reported."""

import copy

import pytest

from coz_train.critic_server.app import CriticServer
from coz_train.rewards.critic import HFCritic, critic_device
from coz_train.rewards.guard import RewardFailedError
from coz_train.train import build_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(compose_cfg, tmp_path_factory):
    cfg = compose_cfg(["+experiment=smoke"], tmp_path_factory.mktemp("server"))
    cfg = copy.deepcopy(cfg)
    cfg.server.port, cfg.server.token_env = 0, "COZ_TEST_UNSET_TOKEN"
    srv = CriticServer(cfg, critic=HFCritic(cfg.critic, critic_device("cpu")))
    srv.start()
    yield srv, srv.url
    srv.stop()


def overrides(url):
    return ["+experiment=smoke", "critic.backend=server", f"critic.url={url}", "critic.served_model=null",
            "critic.retries=1", "critic.timeout_s=30", "critic.token_env=COZ_TEST_UNSET_TOKEN",
            "grpo.save_steps=1", "logging.wandb=false", "reward_failure.retries=1", "reward_failure.backoff_s=0"]


def test_training_with_the_critic_behind_the_server(make_config, server):
    srv, url = server
    trainer, _ = build_trainer(make_config(*overrides(url), "grpo.max_steps=2"))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2 and all(0.0 <= h["rewards/critic/mean"] <= 1.0 for h in logs)
    assert srv.stats["requests"] >= 2 * 8  # every completion was scored remotely


def test_server_stopped_mid_run_is_retried_then_reported_losing_nothing(make_config, compose_cfg, tmp_path):
    cfg = compose_cfg(["+experiment=smoke"], tmp_path / "server")
    cfg.server.port, cfg.server.token_env = 0, "COZ_TEST_UNSET_TOKEN"
    srv = CriticServer(cfg, critic=HFCritic(cfg.critic, critic_device("cpu")))
    url = srv.start().url
    run_cfg = make_config(*overrides(url), "grpo.max_steps=6")
    trainer, _ = build_trainer(run_cfg)

    from transformers import TrainerCallback

    class StopServerAfterStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                srv.stop()

    trainer.add_callback(StopServerAfterStep2())
    with pytest.raises(RewardFailedError, match=r"critic.*failed after 2 attempts.*"):
        trainer.train()
    # the two finished steps are safe on disk: a restart resumes from checkpoint-2
    assert (tmp_path / "run" / "checkpoint-2" / "COMPLETE").is_file()
