"""The conversion command and the hf critic's convert-once cache."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from coz_train.critic_convert.__main__ import main
from coz_train.hub import resolve_model
from coz_train.rewards.critic.conversion.cache import native_internvl
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


def test_weights_rewritten_in_place_are_converted_again_and_an_unchanged_folder_hits_the_cache(tmp_path):
    hub = internvl2_5.build(tmp_path / "InternVL2_5", seed=1)
    first = Path(native_internvl(str(hub), None, 6))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(native_internvl(str(hub), None, 6)) == first  # unchanged: the cached conversion
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp

    # the weights file re-written with another seed: same tensor names and sizes, every other file as it was
    vocab_size = load_file(str(hub / "model.safetensors"))["language_model.output.weight"].shape[0]
    save_file(internvl2_5.random_weights(vocab_size, seed=2), str(hub / "model.safetensors"), metadata={"format": "pt"})
    second = Path(native_internvl(str(hub), None, 6))
    assert second != first
    expected = load_file(str(internvl2_5_converted(hub, tmp_path / "direct") / "model.safetensors"))
    got, old = load_file(str(second / "model.safetensors")), load_file(str(first / "model.safetensors"))
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert not all(torch.equal(got[k], old[k]) for k in got)
    assert Path(native_internvl(str(hub), None, 6)) == second


def internvl2_5_converted(hub: Path, out: Path) -> Path:
    from coz_train.rewards.critic.conversion import convert

    return convert(hub, out, max_tiles=6)
