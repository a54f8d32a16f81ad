"""The OSEDiff-SD3 backbone on a tiny random SD3, with LoRA files written in the official layout."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from coz_train.config import config_dir
from coz_train.sr.backbones import load_backbone
from coz_train.sr.backbones.osediff_sd3 import LoRAInjectedLinear, safe_torch_load
from coz_train.tiny.sd3 import (
    TRANSFORMER_LORA_FILE,
    VAE_LORA_FILE,
    ensure_tiny_sd3,
    official_transformer_lora_modules,
    official_vae_lora_targets,
    write_official_lora_files,
)


@pytest.fixture(scope="module")
def sd3() -> str:
    return ensure_tiny_sd3()


@pytest.fixture(scope="module")
def loras(sd3, tmp_path_factory):
    """{"random": (dir, {module.up/down: tensor}), "zero": (dir, ...)}: same seed, zero = identity LoRA."""
    out = {}
    for kind in ("random", "zero"):
        folder = tmp_path_factory.mktemp(f"lora_{kind}")
        out[kind] = (folder, write_official_lora_files(sd3, folder, seed=1, zero=kind == "zero"))
    return out


def backbone(sd3, lora_dir, **cfg):
    return load_backbone("osediff_sd3", {"sd3": sd3, "lora_dir": str(lora_dir), "dtype": "float32", **cfg}, None)


@pytest.fixture(scope="module")
def model(sd3, loras):
    return backbone(sd3, loras["random"][0])


@pytest.fixture(scope="module")
def lr_images():
    rng = np.random.default_rng(0)
    smooth = np.asarray(
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
    )
    noisy = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return [Image.fromarray(smooth), Image.fromarray(noisy)]


def px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_upscales_a_batch_4x_independently_of_the_batch(model, lr_images):
    assert (model.name, model.scale, model.uses_prompt) == ("osediff_sd3", 4, True)
    prompts = ["a red car", "fur, whiskers"]
    out = model.upscale(lr_images, prompts)
    assert [(o.mode, o.size) for o in out] == [("RGB", (128, 128))] * 2
    assert px(out[0]).std() > 5  # an image, not a constant
    for image, prompt, batched in zip(lr_images, prompts, out, strict=True):
        [single] = model.upscale([image], [prompt])
        assert np.abs(px(single) - px(batched)).max() <= 1  # float noise between batch sizes only
    again = model.upscale(lr_images, prompts)
    assert all(np.array_equal(px(a), px(b)) for a, b in zip(out, again, strict=True))  # seeded latent sample


def test_the_prompt_changes_the_output(model, lr_images):
    a, b, c = model.upscale([lr_images[0]] * 3, ["a red car", "fur, whiskers", "a red car"])
    assert np.abs(px(a) - px(b)).mean() > 0.5
    assert np.abs(px(a) - px(c)).max() <= 1


def test_official_lora_files_are_applied_to_the_official_modules(sd3, loras, model, lr_images):
    _, written = loras["random"]
    # transformer: every AdaLayerNormZero linear, in the official file order, got its own pair
    expected = official_transformer_lora_modules(model.transformer)
    assert model.transformer_lora_modules == expected
    assert expected == [
        "transformer_blocks.0.norm1.linear",
        "transformer_blocks.0.norm1_context.linear",
        "transformer_blocks.1.norm1.linear",
    ]  # the last block's context norm is not adaLN-Zero
    for name in expected:
        wrapped = model.transformer.get_submodule(name)
        assert isinstance(wrapped, LoRAInjectedLinear)
        assert torch.equal(wrapped.lora_up.weight, written[f"{name}.up"])
        assert torch.equal(wrapped.lora_down.weight, written[f"{name}.down"])
    # VAE: the official target rule, as a PEFT adapter `default_encoder` with scale alpha/r = 8/4
    from diffusers import AutoencoderKL

    fresh_vae = AutoencoderKL.from_pretrained(sd3, subfolder="vae")
    targets = sorted({t.removeprefix("encoder.") for t in official_vae_lora_targets(fresh_vae)})
    assert model.vae_lora_modules == targets and "mid_block.attentions.0.to_q" in targets
    lora_layer = model.vae.encoder.get_submodule("down_blocks.1.resnets.0.conv_shortcut")
    assert lora_layer.scaling["default_encoder"] == 2.0
    assert not any("lora" in n for n, _ in model.vae.decoder.named_parameters())
    # and they matter: the same files with zero up/B weights (an identity LoRA) give another image
    identity = backbone(sd3, loras["zero"][0])
    a, b = model.upscale(lr_images[:1], ["a cat"]), identity.upscale(lr_images[:1], ["a cat"])
    assert np.abs(px(a[0]) - px(b[0])).mean() > 5


def test_an_identity_lora_leaves_the_transformer_unchanged(sd3, loras):
    from diffusers import SD3Transformer2DModel

    identity = backbone(sd3, loras["zero"][0])
    plain = SD3Transformer2DModel.from_pretrained(sd3, subfolder="transformer").eval()
    embeds, pooled = identity.encode_prompt(["a cat"])
    z = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1000.0])
    with torch.no_grad():
        ours = identity.transformer(
            hidden_states=z, timestep=t, pooled_projections=pooled, encoder_hidden_states=embeds, return_dict=False
        )[0]
        reference = plain(
            hidden_states=z, timestep=t, pooled_projections=pooled, encoder_hidden_states=embeds, return_dict=False
        )[0]
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_files_in_the_official_checkout_layout_are_found(sd3, loras, tmp_path, lr_images):
    source, _ = loras["random"]
    (tmp_path / "SR_LoRA").mkdir()
    (tmp_path / "SR_VAE").mkdir()
    shutil.copy(source / TRANSFORMER_LORA_FILE, tmp_path / "SR_LoRA")
    shutil.copy(source / VAE_LORA_FILE, tmp_path / "SR_VAE")
    model = backbone(sd3, tmp_path, vae_tiling=False)  # ckpt/ of a clone of the official repo
    assert model.upscale(lr_images[:1], [""])[0].size == (128, 128)


def test_the_shipped_config_builds_it(sd3, loras, lr_images):
    cfg = OmegaConf.load(Path(config_dir()) / "eval" / "backbone" / "osediff_sd3.yaml")
    assert cfg.name == "osediff_sd3" and cfg.lora_dir is None
    cfg.sd3, cfg.lora_dir = sd3, str(loras["random"][0])  # precision as shipped: fp16 text encoders, fp32 rest
    model = load_backbone(cfg.name, cfg, torch.device("cpu"))
    assert model.transformer.dtype == torch.float32 and model.vae.dtype == torch.float32
    assert all(encoder.dtype == torch.float16 for encoder in model.text_encoders)
    assert model.upscale(lr_images[:1], ["a cat"])[0].size == (128, 128)


def test_runs_without_t5(sd3, loras, lr_images):
    model = backbone(sd3, loras["random"][0], t5=False)
    embeds, pooled = model.encode_prompt(["a cat", "a dog"])
    assert embeds.shape == (2, 77 + 512, model.transformer.config.joint_attention_dim)
    assert torch.count_nonzero(embeds[:, 77:]) == 0
    assert model.upscale(lr_images[:1], ["a cat"])[0].size == (128, 128)


class _Payload:
    """Unpickling this runs code: it writes the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_a_pickle_that_would_run_code_is_refused(sd3, loras, tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof)))
    assert proof.read_text() == "ran"  # the payload is real

    marker = tmp_path / "marker"
    lora_dir = tmp_path / "lora"
    shutil.copytree(loras["random"][0], lora_dir)
    with open(lora_dir / TRANSFORMER_LORA_FILE, "wb") as f:  # a plain pickle, as the .pkl name suggests
        pickle.dump([_Payload(marker)], f, protocol=2)
    with pytest.raises(ValueError, match="Refusing to load the transformer LoRA file .*arbitrary code"):
        backbone(sd3, lora_dir)
    shutil.copy(loras["random"][0] / TRANSFORMER_LORA_FILE, lora_dir)
    torch.save({"conv_in.lora_A.default_encoder.weight": _Payload(marker)}, lora_dir / VAE_LORA_FILE)
    with pytest.raises(ValueError, match="Refusing to load the VAE encoder LoRA file"):
        backbone(sd3, lora_dir)
    assert not marker.exists()
    assert isinstance(safe_torch_load(loras["random"][0] / TRANSFORMER_LORA_FILE, "x"), list)


def test_a_file_that_is_not_a_torch_file_is_reported_as_such(tmp_path):
    pointer = tmp_path / "model_20001.pkl"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(ValueError, match="Cannot read the transformer LoRA file .* as a torch file"):
        safe_torch_load(pointer, "transformer LoRA")
    pointer.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="Cannot read the transformer LoRA file"):
        safe_torch_load(pointer, "transformer LoRA")


def test_lora_files_for_another_model_are_rejected(sd3, loras, tmp_path):
    lora_dir = tmp_path / "lora"
    shutil.copytree(loras["random"][0], lora_dir)
    weights = torch.load(lora_dir / TRANSFORMER_LORA_FILE, weights_only=True)
    torch.save(weights[:-2], lora_dir / TRANSFORMER_LORA_FILE)
    with pytest.raises(ValueError, match="4 tensors, but this transformer has 3 AdaLayerNormZero linears"):
        backbone(sd3, lora_dir)
    torch.save(weights, lora_dir / TRANSFORMER_LORA_FILE)
    state = torch.load(lora_dir / VAE_LORA_FILE, weights_only=True)
    del state["conv_in.base_layer.bias"]
    torch.save(state, lora_dir / VAE_LORA_FILE)
    with pytest.raises(ValueError, match="(?s)does not fit this VAE's encoder.*conv_in.base_layer.bias"):
        backbone(sd3, lora_dir)


def test_missing_models_and_files_name_the_config_key(sd3, loras, tmp_path):
    with pytest.raises(ValueError, match=r"eval\.backbone\.lora_dir is not set.*Chain-of-Zoom"):
        load_backbone("osediff_sd3", {"sd3": sd3, "lora_dir": None}, None)
    with pytest.raises(FileNotFoundError, match=r"eval\.backbone\.lora_dir=.*is not a folder"):
        backbone(sd3, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"'model_20001\.pkl' not found in eval\.backbone\.lora_dir"):
        backbone(sd3, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"'renamed\.pt' not found"):
        backbone(sd3, loras["random"][0], vae_lora="renamed.pt")
    for missing in (str(tmp_path / "no_sd3"), "no-such-org/no-such-sd3"):
        with pytest.raises(FileNotFoundError, match=r"eval\.backbone\.sd3='.*'.*hf download"):
            backbone(missing, loras["random"][0])


def test_one_step_mode_goes_straight_to_the_output_size(sd3, loras, lr_images):
    model = backbone(sd3, loras["random"][0])
    crop = lr_images[0].crop((0, 0, 8, 8))
    assert model.upscale([crop], ["a cat"], size=128)[0].size == (128, 128)
