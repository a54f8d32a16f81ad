"""The `grpo` schema comes from a snapshot of TRL's GRPOConfig: it must match the installed TRL, and composing a
config must not import TRL."""

import dataclasses
import json
import subprocess
import sys

from coz_train.config import GRPOSection
from coz_train.grpo_schema import differences, fields_from_trl, grpo_section, main, read_snapshot


def test_the_snapshot_matches_the_installed_trl():
    changed = differences(read_snapshot()["fields"], fields_from_trl())
    assert changed == [], f"run python -m coz_train.grpo_schema --write: {changed}"
    assert main(["--check"]) == 0


def test_the_schema_has_every_field_of_trl_with_its_default():
    from trl import GRPOConfig

    ours = {f.name: f for f in dataclasses.fields(GRPOSection)}
    theirs = [f for f in dataclasses.fields(GRPOConfig) if f.init]
    assert set(ours) == {f.name for f in theirs}
    section = GRPOSection()
    for name in ("num_generations", "beta", "max_completion_length", "learning_rate", "loss_type"):
        value = getattr(GRPOConfig, name, None)
        default = next(f for f in theirs if f.name == name).default
        default = getattr(default, "value", default)
        assert getattr(section, name) == default, (name, value)


def test_differences_name_added_removed_and_changed_fields():
    old = [{"name": "beta", "type": "float", "default": 0.0}, {"name": "gone", "type": "int", "default": 1}]
    new = [{"name": "beta", "type": "float", "default": 0.04}, {"name": "fresh", "type": "str | None", "default": None}]
    assert differences(old, new) == ["added in TRL: fresh", "beta: default 0.0 -> 0.04", "removed from TRL: gone"]
    assert differences(old, old) == []


def test_a_snapshot_file_builds_a_checked_section(tmp_path):
    path = tmp_path / "fields.json"
    path.write_text(json.dumps({"trl": "0", "fields": [
        {"name": "max_steps", "type": "int", "default": -1},
        {"name": "temperature", "type": "float | None", "default": None},
        {"name": "generation_kwargs", "type": "Any", "default": {"top_k": 5}},
    ]}))
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    node = OmegaConf.structured(grpo_section(path))
    assert node.max_steps == -1 and node.temperature is None and node.generation_kwargs == {"top_k": 5}
    try:
        node.max_steps = "many"
    except ValidationError:
        pass
    else:
        raise AssertionError("a str for an int field was accepted")


def test_composing_the_config_imports_no_heavy_library():
    code = ("import sys; from coz_train.config import register_configs; register_configs(); "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'deepspeed', 'bitsandbytes', 'diffusers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
