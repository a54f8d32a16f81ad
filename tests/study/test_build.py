"""`study build` and `invite` on a real smoke evaluation: the manifest, media by id, per-rater tasks, checks."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import CONDITIONS, ZOOM_CENTRE
from PIL import Image
from study_helpers import invitations, manifest, snapshot

from coz_train.study.build import build, invite
from coz_train.study.config import load_config
from coz_train.study.media import MEDIA_ID
from coz_train.study.store import Store
from coz_train.study.tasks import client_view

pytestmark = pytest.mark.slow  # the session's smoke evaluation (~30 s) comes first


def test_the_manifest_holds_conditions_items_media_and_every_raters_tasks(make_study, eval_run):
    study = make_study()
    m = manifest(study)
    assert m["test_conditions"] == {"image": CONDITIONS, "text": ["recursive-vlm", "recursive_multiscale-vlm"]}
    assert [i["id"] for i in m["items"]] == [f"{image}@{s}x" for image in ("astronaut", "coffee") for s in (4, 16, 64)]
    assert len(m["stimuli"]["ordinary"]["image"]) == 6 * 3 and len(m["stimuli"]["ordinary"]["text"]) == 6 * 2
    assert set(m["raters"]) == {"r01", "r02", "r03"} == set(invitations(study))
    for media_id, entry in m["media"].items():  # ids only: the file name says nothing of condition or scale
        assert MEDIA_ID.match(media_id) and entry["file"] == f"media/{media_id}.png"
        assert (study / entry["file"]).is_file()
    # an image-test stimulus is the eval run's own file, byte for byte
    stimulus = next(s for s in m["stimuli"]["ordinary"]["image"]
                    if s["item"] == "coffee@16x" and s["conditions"] == ["recursive-vlm"])
    image_file = study / m["media"][stimulus["panels"][0]["images"][0]]["file"]
    assert image_file.read_bytes() == (eval_run / "per-sample/coffee/recursive-vlm/2.png").read_bytes()
    # a text-test stimulus shows the prompt of that step with [previous state, its zoomed centre]
    text = next(s for s in m["stimuli"]["ordinary"]["text"]
                if s["item"] == "astronaut@64x" and s["conditions"] == ["recursive_multiscale-vlm"])
    prompts = json.loads((eval_run / "per-sample/astronaut/recursive_multiscale-vlm/prompts.json").read_text())
    assert text["panels"][0]["text"] == prompts["3"]
    previous, zoomed = (study / m["media"][i]["file"] for i in text["panels"][0]["images"])
    assert previous.read_bytes() == (eval_run / "per-sample/astronaut/recursive_multiscale-vlm/2.png").read_bytes()
    assert Image.open(zoomed).size == Image.open(previous).size
    # the database knows the same raters and tasks, and no token in clear
    store = Store(study / "study.sqlite")
    assert [t["task"] for t in store.tasks("r02")] == [t["task"] for t in m["raters"]["r02"]]
    assert all(store.rater_for_token(tok) == rater for rater, tok in invitations(study).items())
    store.close()
    dump = "\n".join(snapshot(study))
    assert not any(tok in dump for tok in invitations(study).values())
    assert oct(os.stat(study / "invitations.csv").st_mode & 0o777) == "0o600"


def test_each_rater_gets_a_seeded_order_with_hidden_repeats_and_controls(make_study):
    study = make_study("study.checks.repeats=2", "study.checks.min_gap=4")
    again = make_study("study.checks.repeats=2", "study.checks.min_gap=4")
    raters = manifest(study)["raters"]
    assert raters == manifest(again)["raters"]  # the same seed: the same orders (tokens differ)
    assert invitations(study) != invitations(again)
    assert raters["r01"] != raters["r02"]
    for tasks in raters.values():
        assert [t["task"] for t in tasks] == [f"t{n:04d}" for n in range(1, len(tasks) + 1)]
        checks = Counter((t["test"], t["check"]) for t in tasks)
        assert checks == {("image", ""): 18, ("text", ""): 12, ("image", "repeat"): 2, ("text", "repeat"): 2,
                          ("image", "control"): 1, ("text", "control"): 1}
        assert len({t["test"] for t in tasks[:15]}) == 1 and len({t["test"] for t in tasks[-15:]}) == 1  # blocks
        position = {t["task"]: n for n, t in enumerate(tasks)}
        for t in tasks:
            if t["check"] == "repeat":
                first = tasks[position[t["repeat_of"]]]
                assert position[t["task"]] - position[t["repeat_of"]] > 4
                assert (first["item"], first["condition"], first["panels"]) == (t["item"], t["condition"], t["panels"])
            if t["check"] == "control":
                assert t["condition"] in ("control:nearest", "control:mismatched-text")
                assert t["test"] == "text" or t["item"].endswith("@64x")  # nearest at the largest zoom
    # what a browser sees: images and text, never condition, item or check
    view = client_view(raters["r01"][0])
    assert set(view) == {"task", "test", "kind", "panels", "reference"}
    assert set(view["panels"][0]) == {"images", "text"}


def test_pair_mode_draws_the_sides_per_rater(make_study):
    m = manifest(make_study("study.mode=pair", "study.tests=[image]", "study.checks.repeats=1"))
    tasks = [t for ts in m["raters"].values() for t in ts]
    ordinary = [t for t in tasks if not t["check"]]
    assert len(ordinary) == 3 * 6 * 3  # 3 raters x 6 items x 3 pairs of 3 conditions
    assert {t["kind"] for t in tasks} == {"pair"} and all(len(t["panels"]) == 2 for t in tasks)
    lefts = Counter(t["condition_left"] for t in ordinary)
    assert set(lefts) == set(CONDITIONS) and min(lefts.values()) > 5  # every condition shown on the left
    for rater_tasks in m["raters"].values():
        by_id = {t["task"]: t for t in rater_tasks}
        for t in rater_tasks:
            if t["check"] == "repeat":  # the same pair, sides swapped
                first = by_id[t["repeat_of"]]
                swapped = (first["condition_right"], first["condition_left"])
                assert (t["condition_left"], t["condition_right"]) == swapped
                assert t["panels"] == first["panels"][::-1]
            if t["check"] == "control":
                assert t["condition"] == "control:nearest" in (t["condition_left"], t["condition_right"])
            else:
                assert t["condition"] == ""


def test_items_per_rater_spreads_the_items_evenly(make_study):
    m = manifest(make_study("study.items_per_rater=2", "study.raters=6", "study.tests=[image]",
                            "study.checks.repeats=0"))
    seen = Counter(t["item"] for ts in m["raters"].values() for t in ts if not t["check"])
    assert set(seen.values()) == {6 * 2 * 3 // 6}  # 6 raters x 2 items x 3 conditions over 6 items: 6 each


def test_invite_adds_raters_and_leaves_the_others_alone(make_study):
    study = make_study()
    before = manifest(study)["raters"]
    made = invite(study, load_config(["invite.raters=2", "server.base_url=https://lab.example.org/coz"]))
    assert [m["rater"] for m in made] == ["r04", "r05"]
    assert made[0]["link"] == f"https://lab.example.org/coz/r/{made[0]['token']}"
    after = manifest(study)["raters"]
    assert {k: after[k] for k in before} == before and set(after) == {"r01", "r02", "r03", "r04", "r05"}
    fresh = make_study("study.raters=5")  # a rater's list depends on the seed and its number only
    assert manifest(fresh)["raters"]["r05"] == after["r05"]
    assert invitations(study)["r05"] == made[1]["token"]


def test_link_mode_hard_links_the_runs_images(make_study, eval_run):
    study = make_study("study.media=link", "study.tests=[image]")
    m = manifest(study)
    source = eval_run / "per-sample/astronaut/onestep-null/3.png"
    linked = [e for e in m["media"].values() if e["source"] == str(source)]
    assert linked and os.path.samefile(study / linked[0]["file"], source)


@pytest.mark.parametrize(("overrides", "message"), [
    (["study.conditions=[recursive-vlm,dape]"], r"study.conditions: \['dape'\] not in the eval runs"),
    (["study.scales=[8]"], r"study.scales: \[8\] not in the eval runs, which hold \[4, 16, 64\]"),
    (["study.tests=[image,video]"], r"study.tests=.*one of \('image', 'text'\)"),
    (["study.mode=ranking"], r"study.mode='ranking' must be one of"),
    (["study.conditions=[onestep-null,recursive-vlm]", "study.checks.control_condition=lanczos"],
     r"study.checks.control_condition='lanczos' is not in the eval runs.*study.checks.controls=0"),
    (["study.conditions=[onestep-null,nearest]"], r"study.tests has text but only no condition.*study.tests=\[image\]"),
    (["study.mode=pair", "study.conditions=[onestep-null,recursive-vlm]"],
     r"only \['recursive-vlm'\].*\(2 needed in pair mode\)"),
    (["study.media=symlink"], r"study.media='symlink' must be one of"),
])
def test_bad_settings_stop_the_build_naming_the_key_and_leave_no_folder(eval_run, tmp_path, overrides, message):
    cfg = load_config(["study.name=bad", f"study.dir={tmp_path / 'bad'}", *overrides])
    with pytest.raises(ValueError, match=message):
        build([str(eval_run)], cfg)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()


def test_bad_runs_and_an_existing_study_are_refused(eval_run, tmp_path, make_study):
    cfg = load_config(["study.name=x", f"study.dir={tmp_path / 'x'}"])
    with pytest.raises(FileNotFoundError, match="no per-sample/ folder; give an evaluation run folder"):
        build([str(tmp_path)], cfg)
    with pytest.raises(ValueError, match="No eval run given"):
        build([], cfg)
    copy = tmp_path / "copy"
    shutil.copytree(eval_run, copy)
    with pytest.raises(ValueError, match=r"'bicubic' of image 'astronaut' is in .* study.prefix_conditions=true"):
        build([str(eval_run), str(copy)], cfg)
    both = build([str(eval_run), str(copy)], load_config(
        ["study.name=y", f"study.dir={tmp_path / 'y'}", "study.prefix_conditions=true", "study.tests=[image]",
         f"study.conditions=[{eval_run.name}/recursive-vlm,copy/recursive-vlm]", "study.checks.controls=0"]))
    assert manifest(both)["conditions"] == [f"{eval_run.name}/recursive-vlm", "copy/recursive-vlm"]
    study = make_study()
    with pytest.raises(FileExistsError, match="a study is built once"):
        build([str(eval_run)], load_config([f"study.name={study.name}", f"study.dir={study}"]))
    (copy / ".hydra" / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no \.hydra/config\.yaml"):
        build([str(copy)], load_config(["study.name=z", f"study.dir={tmp_path / 'z'}"]))
    assert not Path(tmp_path / "z").exists()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_a_study_of_a_run_with_a_zoom_centre_shows_the_region_the_run_zoomed_into(centred_eval_run, tmp_path):
    from coz_train.sr.chain import step_boxes, zoom_windows

    windows, centre = zoom_windows(128, 4, 3, ZOOM_CENTRE), zoom_windows(128, 4, 3)
    chains = centred_eval_run / "per-sample" / "astronaut"
    start = Image.open(chains / "nearest" / "0.png").convert("RGB")
    step = {4: 1, 16: 2, 64: 3}

    def study(name: str, *overrides: str) -> tuple[Path, dict]:
        conditions = "study.conditions=[onestep-vlm,recursive_multiscale-vlm]"
        folder = build([str(centred_eval_run)],
                       load_config([f"study.name={name}", f"study.dir={tmp_path / name}", conditions, *overrides]))
        return folder, manifest(folder)

    folder, m = study("crop")
    controls = [s for s in m["raters"]["r01"] if s["check"] == "control" and s["test"] == "image"]  # nearest, 64x
    stimuli = m["stimuli"]["ordinary"]["image"] + controls
    assert {s["item"] for s in stimuli} == {"astronaut@4x", "astronaut@16x", "astronaut@64x"}
    for stimulus in stimuli:  # beside each state: the input's pixels of the window the run zoomed into
        k = step[stimulus["scale"]]
        reference = pixels(folder / m["media"][stimulus["reference"]]["file"])
        assert np.array_equal(reference, np.asarray(start.crop(windows[k - 1]).resize((128, 128), Image.NEAREST)))
        assert not np.array_equal(reference, np.asarray(start.crop(centre[k - 1]).resize((128, 128), Image.NEAREST)))
    low = pixels(folder / m["media"][m["anchors"]["image"][1]["images"][0]]["file"])
    assert np.array_equal(low, np.asarray(start.crop(windows[2]).resize((128, 128), Image.NEAREST)))
    for stimulus in m["stimuli"]["ordinary"]["text"]:  # the zoomed view: the crop the chain's prompt was written from
        k, (condition,) = step[stimulus["scale"]], stimulus["conditions"]
        previous, zoomed = (pixels(folder / m["media"][i]["file"]) for i in stimulus["panels"][0]["images"])
        source = 0 if condition == "onestep-vlm" else k - 1  # onestep's prompt source saw the input's window
        box = windows[k - 1] if condition == "onestep-vlm" else step_boxes(windows, 128, 4)[k - 1]
        crop = Image.fromarray(pixels(chains / condition / f"{source}.png")).crop(box)
        assert np.array_equal(zoomed, np.asarray(crop.resize((128, 128), Image.BICUBIC)))
        assert np.array_equal(previous, pixels(chains / condition / f"{source}.png"))

    folder, m = study("input", "study.image_reference=input", "study.tests=[image]")
    for stimulus in m["stimuli"]["ordinary"]["image"]:  # the input with that window framed in red, 1 px out
        left, top, right, bottom = windows[step[stimulus["scale"]] - 1]
        if right - left < 6:  # a 2 px window is framed 6 px wide around its middle
            middle = (left + right) // 2
            left, top, right, bottom = middle - 3, (top + bottom) // 2 - 3, middle + 3, (top + bottom) // 2 + 3
        outlined = pixels(folder / m["media"][stimulus["reference"]]["file"])
        frame = np.zeros(outlined.shape[:2], dtype=bool)
        frame[top - 1 : bottom + 1, left - 1 : right + 1] = True
        frame[top:bottom, left:right] = False
        assert (outlined[frame] == (255, 32, 32)).all()
        assert np.array_equal(outlined[~frame], np.asarray(start)[~frame])


def test_conditions_that_zoomed_into_other_regions_are_refused_and_old_runs_mean_the_centre(
        eval_run, centred_eval_run, tmp_path):
    both = [f"{eval_run.name}/recursive_multiscale-vlm", f"{centred_eval_run.name}/recursive_multiscale-vlm"]
    cfg = load_config(["study.name=mixed", f"study.dir={tmp_path / 'mixed'}", "study.prefix_conditions=true",
                       f"study.conditions=[{','.join(both)}]", "study.checks.controls=0"])
    with pytest.raises(ValueError, match=r"Image 'astronaut': recursive_multiscale-vlm of .* shows the region "
                                         r"\(48, 48, 80, 80\) at step 1 but .* shows \(16, 16, 48, 48\).*same zoom "
                                         r"centres"):
        build([str(eval_run), str(centred_eval_run)], cfg)
    assert not (tmp_path / "mixed").exists()
    # a run folder from before windows.json: the centre, which is what its chains zoomed into
    old = tmp_path / "old"
    shutil.copytree(eval_run, old)
    assert [p.unlink() for p in old.glob("per-sample/*/windows.json")]
    made = {}
    for run in (eval_run, old):
        name = f"from-{run.name}"
        folder = build([str(run)], load_config([f"study.name={name}", f"study.dir={tmp_path / name}",
                                                f"study.conditions=[{','.join(CONDITIONS)}]"]))
        m = manifest(folder)
        made[run] = {media: (folder / entry["file"]).read_bytes() for media, entry in m["media"].items()
                     if not entry["source"].startswith(str(run))}  # the images made by the study
    assert made[eval_run] == made[old] and made[old]
