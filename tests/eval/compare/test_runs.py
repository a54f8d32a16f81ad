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
    cfg = compose_cfg(["+experiment=smoke_eval", *overrides], tmp_path / name)
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
