"""Source images: thin decompression bombs, EXIF orientation, symbolic links."""

import logging
import os

from PIL import Image

from coz_train.data.images import SkipReport, list_image_files, load_rgb


def test_a_thin_image_is_refused_from_its_header_before_any_upscale(tmp_path):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 40000)).save(thin)
    assert thin.stat().st_size < 2000
    report = SkipReport()
    assert load_rgb(thin, "thin.png", 128, "upscale", 178956970, report) is None
    assert report.skipped == {"extreme aspect ratio": 1}

    # within the aspect bound, but over data.max_image_pixels once its short side reaches process_size
    tall = tmp_path / "tall.png"
    Image.new("RGB", (100, 1900)).save(tall)
    report = SkipReport()
    assert load_rgb(tall, "tall.png", 512, "upscale", 1_000_000, report) is None
    assert report.skipped == {"too large": 1} and "would be 4980736 pixels" in report.summary()
    assert load_rgb(tall, "tall.png", 64, "upscale", 1_000_000, SkipReport()) is not None


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    loaded = load_rgb(path, "rotated.jpg", 8, "upscale", 10**8, SkipReport())
    assert loaded.size == (20, 40)
    r, g, b = loaded.getpixel((10, 2))  # the left edge is now at the top
    assert b > 200 and r < 60


def test_symlinked_folders_are_followed_once(tmp_path, caplog):
    def image(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)

    elsewhere = tmp_path / "elsewhere"
    for i in range(3):
        image(elsewhere / f"{i}.png")
    root = tmp_path / "root"
    image(root / "own.png")
    os.symlink(elsewhere, root / "linked")
    os.symlink(root, root / "linked" / "loop")  # a loop back to the top
    with caplog.at_level(logging.WARNING):
        files = list_image_files(root)
    assert sorted(p.relative_to(root).as_posix() for p in files) == ["linked/0.png", "linked/1.png", "linked/2.png",
                                                                     "own.png"]
    assert "walked once" in caplog.text

    os.unlink(root / "linked" / "loop")
    only_link = tmp_path / "only_link"
    only_link.mkdir()
    os.symlink(elsewhere, only_link / "data")
    assert len(list_image_files(only_link)) == 3
