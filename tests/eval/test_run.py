"""The evaluation command end to end: outputs, tables, determinism, bad input."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from PIL import Image

from coz_train.eval.run import check_eval_config, evaluate, method_labels
from coz_train.hub import resolve_model
from coz_train.policy import load_vlm


@pytest.fixture(scope="module")
def adapter(compose_cfg, tmp_path_factory):
    policy = compose_cfg(["+experiment=smoke_eval"], tmp_path_factory.mktemp("run")).policy
    model = load_vlm(resolve_model(policy.name_or_path, "policy.name_or_path"), policy)
    folder = tmp_path_factory.mktemp("adapter")
    config = LoraConfig(r=8, lora_alpha=32, target_modules=policy.lora.target_modules, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def test_labels_and_checks_of_the_recursive_onestep_and_appending_modes(make_config, adapter):
    cfg = make_config("+experiment=smoke_eval", "eval.methods=[nearest,onestep,recursive,recursive_multiscale]",
                      "eval.onestep_prompt_sources=[null,vlm,user]", "eval.prompt_sources=[null,vlm+user]",
                      "eval.user_prompt='fur, whiskers'")
    assert method_labels(cfg.eval) == [
        "nearest", "onestep-null", "onestep-vlm", "onestep-user", "recursive-null", "recursive-vlm+user",
        "recursive_multiscale-null", "recursive_multiscale-vlm+user",
    ]  # vlm+user already uses eval.user_prompt: no `user` source is added
    check_eval_config(cfg)
    with_user = make_config("+experiment=smoke_eval", "eval.methods=[recursive]", "eval.user_prompt=fur")
    assert method_labels(with_user.eval) == ["recursive-null", "recursive-vlm", "recursive-user"]
    check_eval_config(make_config("+experiment=smoke_eval", "eval.methods=[onestep]", f"eval.adapter={adapter}",
                                  "eval.onestep_prompt_sources=[vlm+adapter]"))
    for overrides, message in [
        (["eval.prompt_sources=[null,vlm+user]"], r"eval\.prompt_sources has \['vlm\+user'\].*eval\.user_prompt"),
        (["eval.methods=[onestep]", "eval.onestep_prompt_sources=[vlm+adapter+user]", f"eval.adapter={adapter}"],
         r"eval\.onestep_prompt_sources has \['vlm\+adapter\+user'\].*eval\.user_prompt"),
        (["eval.methods=[onestep]", "eval.onestep_prompt_sources=[user]", "eval.user_prompt=''"],
         r"eval\.onestep_prompt_sources.*eval\.user_prompt"),
        (["eval.onestep_prompt_sources=[dape]"], r"eval\.onestep_prompt_sources: \['dape'\]"),
        (["eval.methods=[onestep]", "eval.onestep_prompt_sources=[]"], r"eval\.onestep_prompt_sources is empty"),
        (["eval.methods=[recursive]", "eval.prompt_sources=[]"], r"eval\.prompt_sources is empty"),
        (["eval.methods=[onestep]", "eval.onestep_prompt_sources=[vlm+adapter]"], r"eval\.adapter"),
        (["eval.methods=[recursive]", "eval.prompt_sources=[vlm+adapter+user]", "eval.user_prompt=fur"],
         r"eval\.adapter"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_eval_config(make_config("+experiment=smoke_eval", *overrides))
    # before any model or metric loads: the run stops at once, with nothing written
    bad = make_config("+experiment=smoke_eval", "eval.methods=[recursive]", "eval.prompt_sources=[vlm+user]")
    with pytest.raises(ValueError, match=r"eval\.user_prompt is empty"):
        evaluate(bad)
    assert not (Path(bad.output_dir) / "per-sample").exists()


def test_method_labels_and_config_checks(make_config, adapter):
    cfg = make_config("+experiment=smoke_eval", "eval.user_prompt=fur", f"eval.adapter={adapter}",
                      "eval.prompt_sources=[null,vlm,vlm+adapter]")
    assert method_labels(cfg.eval) == [
        "nearest", "bicubic", "onestep-null", "recursive_multiscale-null", "recursive_multiscale-vlm",
        "recursive_multiscale-vlm+adapter", "recursive_multiscale-user",
    ]
    check_eval_config(cfg)
    for override, message in [
        ("eval.methods=[bilinear]", "eval.methods"),
        ("eval.prompt_sources=[dape]", "eval.prompt_sources"),
        ("eval.adapter=/nonexistent", "eval.adapter"),
        ("eval.colorfix=sepia", "eval.colorfix"),
        ("eval.backbone.name=swinir", "eval.backbone.name"),
        ("eval.steps=5", "eval.steps"),
    ]:
        bad = make_config("+experiment=smoke_eval", f"eval.adapter={adapter}", "eval.prompt_sources=[null,vlm+adapter]", override)
        with pytest.raises((ValueError, FileNotFoundError), match=message.replace(".", r"\.")):
            check_eval_config(bad)


@pytest.mark.slow
def test_smoke_eval_end_to_end(tmp_path, adapter):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "coz_train.eval", "+experiment=smoke_eval", f"eval.adapter={adapter}",
         "eval.prompt_sources=[null,vlm,vlm+adapter]", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    methods = ["nearest", "bicubic", "onestep-null", "recursive_multiscale-null", "recursive_multiscale-vlm",
               "recursive_multiscale-vlm+adapter"]
    for image in ("astronaut", "coffee"):
        for method in methods:
            folder = run / "per-sample" / image / method
            assert [Image.open(folder / f"{k}.png").size for k in range(4)] == [(128, 128)] * 4
            prompts = json.loads((folder / "prompts.json").read_text())
            assert set(prompts) == {"1", "2", "3"}
            if method == "recursive_multiscale-null":
                assert set(prompts.values()) == {""}
        assert (run / "per-sample" / image / "chains.png").is_file()
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert list(rows[0]) == ["method", "scale", "metric", "mean", "std", "n"]
    keys = {(r["method"], r["scale"], r["metric"]) for r in rows}
    for method in methods:
        for scale in ("4", "16", "64"):
            assert (method, scale, "niqe") in keys and (method, scale, "piqe") in keys
    assert not any(r["metric"] == "musiq" for r in rows)  # no weights offline: never a number
    for method in methods:  # eval.consistency_metrics: psnr, ssim (the default)
        for scale in ("4", "16", "64"):
            assert {(method, scale, "consistency_psnr"), (method, scale, "consistency_ssim")} <= keys
        # only astronaut (512 px) has a ground truth, at 4x: the 64x state's 8 px there has a PSNR, no SSIM (11 px)
        assert (method, "64", "projected_psnr") in keys and (method, "64", "projected_ssim") not in keys
    consistency = {r["method"]: float(r["mean"]) for r in rows if r["metric"] == "consistency_psnr" and r["scale"] == "16"}
    assert consistency["bicubic"] > consistency["nearest"] + 10  # bicubic resizes agree across scales; blocks do not
    md = (run / "results.md").read_text()
    assert "## niqe (lower is better)" in md and "- musiq:" in md
    assert (run / "metrics.png").is_file()


@pytest.mark.slow
def test_recursive_onestep_and_appended_prompts_end_to_end(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "coz_train.eval", "+experiment=smoke_eval", "eval.max_images=1", "eval.steps=2",
         "eval.methods=[onestep,recursive]", "eval.onestep_prompt_sources=[null,vlm,user]",
         "eval.prompt_sources=[vlm,vlm+user]", "eval.user_prompt='fur, whiskers'", "eval.metrics=[piqe]",
         "eval.consistency_metrics=[]", "eval.figures=false", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    methods = ["onestep-null", "onestep-vlm", "onestep-user", "recursive-vlm", "recursive-vlm+user"]
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert list(rows[0]) == ["method", "scale", "metric", "mean", "std", "n"]
    assert sorted((r["method"], r["scale"]) for r in rows) == sorted((m, s) for m in methods for s in ("4", "16"))
    assert all(r["metric"] == "piqe" and r["n"] == "1" for r in rows)
    folder = run / "per-sample" / "astronaut"
    prompts = {m: json.loads((folder / m / "prompts.json").read_text()) for m in methods}
    assert prompts["onestep-null"] == {"1": "", "2": ""}
    assert prompts["onestep-user"] == {"1": "fur, whiskers", "2": "fur, whiskers"}
    assert all(isinstance(p, str) for p in prompts["onestep-vlm"].values())
    # Real-ESRGAN ignores prompts, so both recursive chains show the VLM the same images: the +user
    # prompts are the VLM's own with the user text appended as the official --prompt does
    for k in ("1", "2"):
        assert prompts["recursive-vlm+user"][k] == f"{prompts['recursive-vlm'][k]}, fur, whiskers,"
    assert (folder / "recursive-vlm+user" / "2.png").is_file()
    md = (run / "results.md").read_text()
    assert all(f"| {m} |" in md for m in methods)


def test_every_method_zooms_into_the_chosen_centre_and_is_scored_there(make_config, tmp_path):
    centres = tmp_path / "centres.json"
    centres.write_text('{"astronaut": [0.1, 0.9]}')
    cfg = make_config("+experiment=smoke_eval", "eval/backbone=bicubic", "eval.max_images=1", "eval.steps=2",
                      "eval.methods=[nearest,bicubic,onestep,recursive,recursive_multiscale]", "eval.metrics=[psnr]",
                      "eval.prompt_sources=[null]", f"eval.zoom_centres={centres}", "eval.figures=false")
    out = evaluate(cfg)
    folder = out / "per-sample" / "astronaut"
    start = Image.open(folder / "nearest" / "0.png")
    # (0.1, 0.9) of the 128 px start: 4x shows its (0, 96, 32, 128), 16x its (9, 111, 17, 119)
    for k, window in ((1, (0, 96, 32, 128)), (2, (9, 111, 17, 119))):
        expected = start.crop(window).resize((128, 128), Image.NEAREST)
        assert Image.open(folder / "nearest" / f"{k}.png").tobytes() == expected.tobytes()
        expected = start.crop(window).resize((128, 128), Image.BICUBIC)  # the bicubic backbone, once, on that crop
        assert Image.open(folder / "onestep-null" / f"{k}.png").tobytes() == expected.tobytes()
    rows = {(r["method"], r["scale"], r["metric"]): float(r["mean"]) for r in csv.DictReader((out / "results.csv").open())}
    for method in method_labels(cfg.eval):
        # the ground truth at 4x follows the window: a resize of the same region agrees with it
        assert rows[(method, "4", "psnr")] > 25, method
        assert {(method, "4", "consistency_psnr"), (method, "16", "consistency_ssim"), (method, "16", "projected_psnr"),
                (method, "16", "projected_ssim")} <= set(rows), method
    md = (out / "results.md").read_text()
    assert "## consistency_psnr (higher is better)" in md and "## projected_ssim (higher is better)" in md


def test_same_config_and_seed_give_the_same_numbers_and_images(make_config, tmp_path):
    overrides = ["+experiment=smoke_eval", "eval.max_images=1", "eval.metrics=[piqe]", "eval.figures=false",
                 "eval.methods=[onestep,recursive_multiscale]"]
    first = evaluate(make_config(*overrides))
    second_cfg = make_config(*overrides)
    second_cfg.output_dir = str(tmp_path / "second")
    second = evaluate(second_cfg)
    assert (first / "results.csv").read_bytes() == (second / "results.csv").read_bytes()
    for png in (first / "per-sample").rglob("*.png"):
        assert png.read_bytes() == (second / png.relative_to(first)).read_bytes(), png


def test_unreadable_eval_images_are_skipped_and_counted(make_config, tmp_path, caplog):
    folder = tmp_path / "eval_images"
    (folder / "set").mkdir(parents=True)
    Image.new("RGB", (160, 140), (90, 120, 30)).save(folder / "set" / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.new("RGB", (40, 40), (1, 2, 3)).save(folder / "tiny.png")
    cfg = make_config("+experiment=smoke_eval", f"eval.image_dir={folder}", "eval.methods=[bicubic]",
                      "eval.metrics=[psnr,piqe]", "eval.small_images=skip", "eval.figures=false")
    out = evaluate(cfg)
    assert sorted(p.name for p in (out / "per-sample").iterdir()) == ["broken.skipped.json", "set_good", "tiny.skipped.json"]
    assert "Skipped 2 eval images" in caplog.text and "unreadable" in caplog.text and "too small" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.png").write_bytes(b"nope")
    none_usable = make_config("+experiment=smoke_eval", f"eval.image_dir={empty}", "eval.methods=[bicubic]")
    none_usable.output_dir = str(tmp_path / "none-usable")  # a run folder holds one config's results
    with pytest.raises(Exception, match="No usable eval image"):
        evaluate(none_usable)
