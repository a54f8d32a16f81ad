"""A run goes down the layers once: every check before any weights load, each once; building only builds."""

import pytest

import coz_train.preflight as preflight_module
import coz_train.train as train_module

pytestmark = pytest.mark.slow


def counted(monkeypatch, module, name, calls):
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def test_each_check_runs_once_before_any_weights_load(make_config, monkeypatch):
    calls: dict[str, int] = {}
    for module, name in ((preflight_module, "check_run_config"), (preflight_module, "check_models"),
                         (train_module, "check_data_config"), (train_module, "check_perf_config"),
                         (train_module, "grpo_args"), (preflight_module, "resume_checkpoint"),
                         (train_module, "configure_wandb")):
        counted(monkeypatch, module, name, calls)
    order = []
    load_vlm = train_module.load_vlm

    def loading(*args, **kwargs):
        order.append(dict(calls))  # what had run when the first weights loaded
        return load_vlm(*args, **kwargs)

    monkeypatch.setattr(train_module, "load_vlm", loading)
    cfg = make_config("+experiment=smoke", "logging.wandb=false", "grpo.max_steps=1", "grpo.save_steps=1000")
    adapter = train_module.train(cfg, preflight_module.preflight(cfg))
    assert (adapter / "adapter_model.safetensors").is_file()
    assert calls == dict.fromkeys(calls, 1) and len(calls) == 7, calls
    assert order == [calls]  # every check had run, once, when the policy's weights loaded


def test_a_plan_is_built_without_checking_again(make_config, monkeypatch):
    cfg = make_config("+experiment=smoke", "logging.wandb=false", "grpo.max_steps=1")
    plan = train_module.check_run(cfg)
    assert plan.resume is None and [name for name, _, _ in plan.rewards] == ["critic", "phrase_exclusion", "repetition"]

    def refuse(*args, **kwargs):
        raise AssertionError("build_trainer checked the run again")

    monkeypatch.setattr(train_module, "check_run", refuse)
    trainer, resume = train_module.build_trainer(cfg, plan)
    assert resume is None and trainer.args is plan.args
