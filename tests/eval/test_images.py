"""Per-image zoom centres: the CSV and JSON files, how they name images, and the errors that name the file and row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from coz_train.eval.images import zoom_centres
from coz_train.eval.methods import check_eval_config
from coz_train.eval.run import evaluate


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "set").mkdir(parents=True)
    for name in ("set/0801.png", "0802.png", "0803.jpg"):
        Image.new("RGB", (160, 140), (90, 120, 30)).save(folder / name)
    return folder


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_csv_names_images_by_folder_name_path_or_stem_and_overrides_the_global_centre(
    make_config, image_dir, tmp_path
):
    centres = write(tmp_path / "centres.csv", "image,x,y\nset/0801.png,0.1,0.9\n0802,0.25,0.75\n")
    cfg = make_config(
        "+experiment=smoke_eval",
        f"eval.image_dir={image_dir}",
        f"eval.zoom_centres={centres}",
        "eval.zoom_centre=[0.6,0.4]",
        "eval.max_images=1",
    )
    # every image of the folder (eval.max_images aside: one file serves every shard), by its per-sample folder name
    assert zoom_centres(cfg.eval) == {"set_0801": (0.1, 0.9), "0802": (0.25, 0.75), "0803": (0.6, 0.4)}
    check_eval_config(cfg)
    plain = make_config("+experiment=smoke_eval", f"eval.image_dir={image_dir}")
    assert set(zoom_centres(plain.eval).values()) == {(0.5, 0.5)}


def test_a_json_file_and_the_shipped_images(make_config, tmp_path):
    centres = write(tmp_path / "centres.json", json.dumps({"astronaut": [0.3, 0.2], "coffee": {"x": 1, "y": 0}}))
    cfg = make_config("+experiment=smoke_eval", f"eval.zoom_centres={centres}")
    assert zoom_centres(cfg.eval) == {"astronaut": (0.3, 0.2), "coffee": (1.0, 0.0)}


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "c.csv",
            "image,x,y\n0802,0.5,0.5\nset/0899.png,0.5,0.5\n",
            r"c\.csv', row 3: 'set/0899\.png' is not an eval image",
        ),
        ("c.csv", "image,x,y\n0802,0.5,1.5\n", r"c\.csv', row 2: zoom centre \(0\.5, 1\.5\) is outside the image"),
        ("c.csv", "image,x,y\n0802,left,0.5\n", r"c\.csv', row 2: x and y must be numbers"),
        ("c.csv", "name,x,y\n0802,0.5,0.5\n", r"c\.csv': the CSV needs the header image,x,y"),
        ("c.csv", "image,x,y\n0802,0.5,0.5\n0802.png,0.2,0.2\n", r"c\.csv', row 3: '0802\.png' was given already"),
        ("c.json", '{"0802": [0.5]}', r"c\.json', entry '0802': a zoom centre is \[x, y\]"),
        ("c.json", '{"0802": "middle"}', r"c\.json', entry '0802': give \[x, y\]"),
        ("c.json", '[["0802", 0.5, 0.5]]', r"c\.json': the JSON must be an object"),
        ("c.json", "{", r"c\.json' is not valid JSON"),
        ("c.txt", "0802 0.5 0.5", r"c\.txt': a zoom-centre file is a \.csv"),
    ],
)
def test_bad_zoom_centre_files_name_the_file_and_row(make_config, image_dir, tmp_path, name, text, message):
    cfg = make_config(
        "+experiment=smoke_eval", f"eval.image_dir={image_dir}", f"eval.zoom_centres={write(tmp_path / name, text)}"
    )
    with pytest.raises(ValueError, match=rf"eval\.zoom_centres='.*{message}"):
        check_eval_config(cfg)


def test_bad_centres_stop_the_run_before_anything_loads(make_config, tmp_path):
    missing = make_config("+experiment=smoke_eval", f"eval.zoom_centres={tmp_path / 'nowhere.csv'}")
    with pytest.raises(FileNotFoundError, match=r"eval\.zoom_centres='.*nowhere\.csv' is not a file"):
        evaluate(missing)
    outside = make_config("+experiment=smoke_eval", "eval.zoom_centre=[0.5,-0.2]")
    with pytest.raises(ValueError, match=r"eval\.zoom_centre: zoom centre \(0\.5, -0\.2\) is outside the image"):
        evaluate(outside)
    three = make_config("+experiment=smoke_eval", "eval.zoom_centre=[0.5,0.5,0.5]")
    with pytest.raises(ValueError, match=r"eval\.zoom_centre: a zoom centre is \[x, y\]"):
        evaluate(three)
    assert not (Path(outside.output_dir) / "per-sample").exists()
