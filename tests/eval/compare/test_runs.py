"""Reading eval run folders, the protocol check (the keys named, --ignore-key, what is compared may differ), the
runs' names in the tables and the images common to all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from coz_train.eval.compare.runs import (
    EvalRun,
    ProtocolMismatchError,
    TooFewImagesError,
    check_protocol,
    common_images,
    load_run,
    named,
)


def test_a_run_folder_is_read_with_every_image_and_score(smoke_run, tmp_path):
    run = load_run(smoke_run)
    assert len(run.images) == 12 and run.images[0] == "0000"
    assert run.methods == ["bicubic", "recursive_multiscale-null", "recursive_multiscale-vlm"]
    assert {(4, "brisque"), (4, "piqe"), (16, "brisque"), (16, "piqe")} <= {(s, m) for _, s, m in run.scores}
    stored = json.loads((smoke_run / "per-sample" / "0005" / "scores.json").read_text())["scores"]
    method, scale, metric, value = stored[0]
    assert run.values(method, scale, metric, ["0005"])[0] == value
    with pytest.raises(FileNotFoundError, match=r"not the folder of a `python -m coz_train.eval` run \(no eval_record"):
        load_run(smoke_run / "per-sample")


def record(compose_cfg, tmp_path: Path, name: str, *overrides: str) -> EvalRun:
    """What eval_record.json would hold for these overrides (+experiment=smoke_eval unless they name another)."""
    experiment = [] if any(o.startswith("+experiment=") for o in overrides) else ["+experiment=smoke_eval"]
    cfg = compose_cfg([*experiment, *overrides], tmp_path / name)
    return EvalRun(tmp_path / name, OmegaConf.to_container(cfg, resolve=True), {}, ("0001",), name)


def test_what_is_compared_may_differ_and_the_protocol_may_not(compose_cfg, tmp_path):
    base = record(compose_cfg, tmp_path, "base")
    subject = record(compose_cfg, tmp_path, "subject", "seed=3", "eval.prompt_sources=[vlm,vlm+adapter]",
                     f"eval.adapter={tmp_path}", "eval.methods=[recursive_multiscale]", "eval.max_images=5",
                     "eval.batch_size=1", "eval.user_prompt=fur", "policy.max_pixels=12544")
    check_protocol([base, subject])  # adapter, VLM, methods, seed, and how the run was done
    moved = record(compose_cfg, tmp_path, "moved", "eval.image_dir=/data/div2k_valid", "eval.colorfix=wavelet")
    with pytest.raises(ProtocolMismatchError, match=r"eval\.colorfix: 'none' in base, 'wavelet' in moved; "
                                                    r"eval\.image_dir: None in base, '/data/div2k_valid' in moved"):
        check_protocol([base, subject, moved])
    with pytest.raises(ProtocolMismatchError, match=r"\(eval\.colorfix: [^;]*\)"):
        check_protocol([base, moved], ignore=["eval.image_dir"])
    check_protocol([base, moved], ignore=["eval.image_dir", "eval.colorfix"])


def test_names_are_made_unique_and_too_few_common_images_are_refused(tmp_path):
    runs = [EvalRun(tmp_path / parent / "run", {}, {}, images, "") for parent, images in
            (("a", ("01", "02", "03")), ("b", ("02", "03", "04")))]
    runs = named(runs)
    assert [r.name for r in runs] == ["a/run", "b/run"]
    assert common_images(runs, 2) == ["02", "03"]
    with pytest.raises(TooFewImagesError, match=r"Only 2 images are common to all runs \(a/run: 3, b/run: 3\) "
                                                r"\(e\.g\. '01' is missing from b/run\).*--min-images=3"):
        common_images(runs, 3)


def test_a_protocol_preset_fixes_everything_but_what_is_compared(compose_cfg, tmp_path):
    given = ["eval.image_dir=/data/DIV2K_valid_HR", "eval.backbone.lora_dir=/models/osediff_sd3"]
    released = record(compose_cfg, tmp_path, "released", "+experiment=protocol_div2k_valid", *given,
                      "eval.adapter=/ckpt/VLM_LoRA/checkpoint-10000")
    mine = record(compose_cfg, tmp_path, "mine", "+experiment=protocol_div2k_valid", *given,
                  "eval.adapter=outputs/grpo_qwen/run/adapter", "seed=1")
    check_protocol([released, mine])
    ev = released.config["eval"]
    assert (ev["process_size"], ev["scale"], ev["steps"], ev["max_new_tokens"], ev["do_sample"]) == (512, 4, 4, 32, False)
    assert ev["metrics"] == ["niqe", "musiq", "maniqa", "clipiqa"] and ev["backbone"]["name"] == "osediff_sd3"
    paper = record(compose_cfg, tmp_path, "paper", "+experiment=protocol_paper", *given)
    assert paper.config["eval"]["metrics"] == ev["metrics"] and paper.config["eval"]["steps"] == 4
    check_protocol([paper, released])  # the paper's methods are more, on other images: the same settings
