"""The tiny SD3 with random OSEDiff LoRA files in the official layout: the backbone of the SR-quality tests."""

import pytest


@pytest.fixture(scope="session")
def tiny_osediff(tmp_path_factory) -> list[str]:
    """Overrides that point rewards.sr_quality.backbone at the tiny SD3 (float32 throughout, for the CPU)."""
    from coz_train.tiny.sd3 import ensure_tiny_sd3, write_official_lora_files

    sd3 = ensure_tiny_sd3()
    lora = tmp_path_factory.mktemp("osediff_lora")
    write_official_lora_files(sd3, lora, seed=1)
    return [f"rewards.sr_quality.backbone.sd3={sd3}", f"rewards.sr_quality.backbone.lora_dir={lora}",
            "rewards.sr_quality.backbone.text_dtype=float32"]
