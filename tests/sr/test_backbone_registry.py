"""What a backbone's registration declares: whether it reads its prompt, known before any weights load."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from coz_train.config import config_dir
from coz_train.sr.backbones import backbone_section, backbone_uses_prompt, load_backbone, register_backbone


def test_registrations_declare_which_backbones_read_the_prompt():
    assert backbone_uses_prompt("osediff_sd3") is True
    assert {name: backbone_uses_prompt(name) for name in ("bicubic", "nearest", "realesrgan_x4plus")} == {
        "bicubic": False, "nearest": False, "realesrgan_x4plus": False}
    with pytest.raises(KeyError, match="rewards.sr_quality.backbone.name='esrgan'"):
        backbone_uses_prompt("esrgan", "rewards.sr_quality.backbone.name")


def test_a_built_backbone_that_contradicts_its_registration_is_refused(monkeypatch):
    import coz_train.sr.backbones as backbones
    from coz_train.sr.backbones import base

    class Liar:
        name, scale, uses_prompt = "liar", 4, False

    monkeypatch.setitem(backbones.BACKBONE_MODULES, "liar", "resample")
    monkeypatch.setattr(base, "_BACKBONES", dict(base._BACKBONES))
    monkeypatch.setattr(base, "_USES_PROMPT", dict(base._USES_PROMPT))
    register_backbone("liar", uses_prompt=True)(lambda cfg, device: Liar())
    with pytest.raises(TypeError, match="registered with uses_prompt=True"):
        load_backbone("liar", {}, None)


def test_backbone_section_layers_the_shipped_file_under_the_overrides_and_names_bad_keys():
    section = backbone_section("osediff_sd3", {"lora_dir": "/models/osediff", "dtype": None}, "rewards.x.backbone")
    shipped = OmegaConf.load(Path(config_dir()) / "eval" / "backbone" / "osediff_sd3.yaml")
    assert section.name == "osediff_sd3" and section.lora_dir == "/models/osediff"
    assert section.text_dtype == shipped.text_dtype == "float16" and section.dtype == "float32"
    with pytest.raises(ValueError, match=r"rewards.x.backbone.lora_path: Key 'lora_path' not in"):
        backbone_section("osediff_sd3", {"lora_path": "/x"}, "rewards.x.backbone")
