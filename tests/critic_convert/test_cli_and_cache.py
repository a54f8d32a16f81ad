"""The conversion command and the hf critic's convert-once cache."""

import json
from pathlib import Path

import pytest

from coz_train.critic_convert.__main__ import main
from coz_train.critic_convert.cache import native_internvl
from coz_train.hub import resolve_model
from coz_train.tiny import internvl2_5


def test_command_converts_a_folder_and_refuses_a_folder_without_config(tmp_path, capsys):
    hub = internvl2_5.build(tmp_path / "hub", seed=1)
    main([str(hub), str(tmp_path / "out"), "--max-tiles", "4"])
    processor = json.loads((tmp_path / "out" / "processor_config.json").read_text())
    assert processor["image_processor"]["max_patches"] == 4
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "internvl"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing"), str(tmp_path / "out2")])
    assert "has no config.json" in capsys.readouterr().err


def test_hf_critic_path_converts_internvl_once_and_leaves_other_models_alone():
    qwen = resolve_model("tiny:qwen2_5_vl@1", "critic.name_or_path")
    assert native_internvl(qwen, None, 6) == qwen
    hub = resolve_model("tiny:internvl2_5", "critic.name_or_path")
    converted = native_internvl(hub, None, 6)
    assert converted != hub and json.loads((Path(converted) / "config.json").read_text())[
        "model_type"] == "internvl"
    stamp = (Path(converted) / "model.safetensors").stat().st_mtime_ns
    assert native_internvl(hub, None, 6) == converted  # cached: not converted again
    assert (Path(converted) / "model.safetensors").stat().st_mtime_ns == stamp
    assert native_internvl(hub, None, 4) != converted  # another tiling is another folder
