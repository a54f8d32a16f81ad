"""Bad run settings stop before any model is resolved or loaded, naming the key."""

import pytest

import coz_train.train as train_module
from coz_train.train import build_trainer


@pytest.fixture
def no_model_loads(monkeypatch):
    """A tripwire: these checks must fire before the policy loads."""

    def tripwire(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(train_module, "load_vlm", tripwire)
    monkeypatch.setattr(train_module, "load_processor", tripwire)


@pytest.mark.parametrize(("override", "message"), [
    ("grpo.max_steps=0", r"grpo.max_steps=0 must be positive"),
    ("grpo.max_steps=-5", r"grpo.max_steps=-5 must be positive"),
    ("grpo.save_steps=0", r"grpo.save_steps=0 must be positive"),
    ("grpo.per_device_train_batch_size=0", r"grpo.per_device_train_batch_size=0 must be positive"),
    ("grpo.num_generations=1", r"grpo.num_generations=1: .* at least 2"),
    ("grpo.num_generations=3", r"divisible by.*num_generations \(3\)"),
])
def test_bad_counts_stop_before_models_load(make_config, no_model_loads, override, message):
    with pytest.raises(ValueError, match=message):
        build_trainer(make_config("+experiment=smoke", "logging.wandb=false", override))


def test_output_dir_that_is_a_file_names_the_key(compose_cfg, tmp_path, no_model_loads):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    cfg = compose_cfg(["+experiment=smoke", "logging.wandb=false"], target)
    with pytest.raises(ValueError, match=r"output_dir='.*taken' is a file, not a folder"):
        build_trainer(cfg)
    assert target.read_text() == "not a folder"
