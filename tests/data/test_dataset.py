import logging

import numpy as np
import pytest
from PIL import Image

from coz_train.data import SYSTEM_MESSAGE, build_zoom_dataset
from coz_train.data.images import NoUsableImagesError


def noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    noise(96, 80, 1).save(d / "rgb.png")
    noise(90, 90, 2).convert("L").save(d / "grey.png")
    noise(90, 90, 3).convert("P", palette=Image.ADAPTIVE).save(d / "sub" / "palette.png")
    rgba = noise(90, 90, 4).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    Image.fromarray((np.random.default_rng(5).integers(0, 65535, (90, 90))).astype(np.uint16)).save(d / "deep16.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "truncated.png").write_bytes((d / "rgb.png").read_bytes()[:200])
    (d / "notes.txt").write_text("not an image")
    noise(40, 40, 6).save(d / "small.png")
    return d


def data_cfg(make_config, *overrides):
    return make_config("+experiment=smoke", "data.process_size=64", "data.depth=2", "data.max_images=null", *overrides).data


def test_folder_converts_modes_skips_and_counts_bad_files(make_config, image_dir, caplog):
    caplog.set_level(logging.INFO)
    ds = build_zoom_dataset(data_cfg(make_config, f"data.image_dir={image_dir}"), seed=0)
    sources = sorted(set(ds["source"]))
    assert sources == ["deep16.png", "grey.png", "rgb.png", "rgba.png", "small.png", "sub/palette.png"]
    assert len(ds) == 6 * 2  # two depths per image
    row = ds[0]
    assert [im.mode for im in row["images"]] == ["RGB", "RGB"]
    assert [im.size for im in row["images"]] == [(64, 64), (64, 64)]
    assert row["prompt"][0]["content"][0]["text"] == SYSTEM_MESSAGE
    assert [p["type"] for p in row["prompt"][1]["content"]] == ["image", "image"]
    assert "Skipped 2 of 8 source images: 2 unreadable" in caplog.text


def test_small_images_can_be_skipped(make_config, image_dir):
    ds = build_zoom_dataset(data_cfg(make_config, f"data.image_dir={image_dir}", "data.small_images=skip"), seed=0)
    assert "small.png" not in set(ds["source"])


def test_decompression_bomb_is_refused(make_config, image_dir, caplog):
    cfg = data_cfg(make_config, f"data.image_dir={image_dir}", "data.max_image_pixels=5000")
    ds = build_zoom_dataset(cfg, seed=0)
    assert set(ds["source"]) == {"small.png"}  # 40x40 = 1600 pixels is the only one under the limit
    assert "too large" in caplog.text and "data.max_image_pixels" in caplog.text


def test_no_usable_image_is_a_clear_error(make_config, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"garbage")
    with pytest.raises(NoUsableImagesError, match="No usable image"):
        build_zoom_dataset(data_cfg(make_config, f"data.image_dir={bad}"), seed=0)
    with pytest.raises(FileNotFoundError, match="data.image_dir"):
        build_zoom_dataset(data_cfg(make_config, f"data.image_dir={tmp_path / 'missing'}"), seed=0)


def test_cache_is_reused_and_invalidated(make_config, image_dir, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    cfg = data_cfg(make_config, f"data.image_dir={image_dir}")
    first = build_zoom_dataset(cfg, seed=0)
    import coz_train.data.dataset as dataset_module

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(dataset_module, "_rows", no_rebuild)
    again = build_zoom_dataset(cfg, seed=0)
    assert again["source"] == first["source"] and "loaded from cache" in caplog.text
    assert build_zoom_dataset(cfg, seed=1)["source"] == first["source"]  # seed does not matter for centre crops
    monkeypatch.undo()
    noise(90, 90, 9).save(image_dir / "new.png")  # a new file changes the key
    assert len(build_zoom_dataset(cfg, seed=0)) == len(first) + 2


def test_random_crops_depend_on_seed_only(make_config):
    cfg = data_cfg(make_config, "data.crop=random", "data.chains_per_image=2", "data.max_images=2")
    a, b, c = (build_zoom_dataset(cfg, seed=s) for s in (0, 0, 1))
    assert len(a) == 2 * 2 * 2
    assert a["crop_box"] == b["crop_box"] and a["crop_box"] != c["crop_box"]
    assert all(0 <= x0 and x1 <= 64 and x1 - x0 == 16 for x0, _, x1, _ in a["crop_box"])


def test_shipped_images_and_single_image_prompt(make_config):
    ds = build_zoom_dataset(data_cfg(make_config, "data.single_image_prompt=true", "data.max_images=1"), seed=0)
    assert len(ds[0]["images"]) == 1 and ds[0]["source"] == "skimage:astronaut"
    assert [p["type"] for p in ds[0]["prompt"][1]["content"]] == ["image"]


def test_hugging_face_dataset_source(make_config, image_dir):
    # a local folder loads through datasets' imagefolder builder, as a hub dataset of images would
    clean = image_dir.parent / "clean"
    clean.mkdir()
    for name in ("rgb.png", "grey.png"):
        (clean / name).write_bytes((image_dir / name).read_bytes())
    ds = build_zoom_dataset(data_cfg(make_config, f"data.dataset={clean}"), seed=0)
    assert len(ds) == 2 * 2 and ds[0]["source"].startswith(str(clean))
    with pytest.raises(KeyError, match="data.dataset_image_column"):
        build_zoom_dataset(data_cfg(make_config, f"data.dataset={clean}", "data.dataset_image_column=img"), seed=0)
