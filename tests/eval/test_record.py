"""The per-sample record: a restart skips finished images, a killed run's leftovers are redone, a run
folder keeps one config, and the evaluation shows a progress bar with an ETA."""

import json
import logging
import re
from pathlib import Path

import pytest

import coz_train.eval.run as run_module
from coz_train.eval.record import RecordMismatchError, write_sample
from coz_train.eval.run import evaluate

# Cheap but complete: a resize, the one-step and CoZ paths through a backbone, the tiny VLM's prompts,
# a no-reference and a full-reference metric.
CHEAP = ["+experiment=smoke_eval", "eval/backbone=bicubic", "eval.methods=[bicubic,onestep,recursive_multiscale]",
         "eval.prompt_sources=[null,vlm]", "eval.metrics=[piqe,psnr]", "eval.steps=2", "eval.figures=false",
         "eval.shipped_images=[astronaut,coffee,chelsea]"]


def files_with_times(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_restart_skips_finished_images_and_redoes_unfinished_ones(make_config, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("COZ_PROGRESS_INTERVAL", "0")  # every update of the bar is a log line
    caplog.set_level(logging.INFO)
    first = make_config(*CHEAP, "eval.max_images=2")
    out = evaluate(first)
    assert re.search(r"eval: +100%\|.*\| 2/2 \[\d\d:\d\d<00:00", caplog.text), caplog.text[-2000:]
    assert len(re.findall(r"eval: +100%", caplog.text)) == 1, caplog.text[-2000:]  # closing the bar does not repeat it
    assert not re.search(r"Evaluated |: done", caplog.text)  # the bar replaces the per-image lines
    samples = out / "per-sample"
    astronaut = files_with_times(samples / "astronaut")
    assert "scores.json" in astronaut and "recursive_multiscale-vlm/2.png" in astronaut

    # what a kill leaves: coffee's folder without its scores (an older run's), a temp folder of chelsea's
    (samples / "coffee" / "scores.json").unlink()
    (samples / ".chelsea.tmp99999" / "bicubic").mkdir(parents=True)
    written = []

    def recording_write(out_dir, name, *args, **kwargs):
        written.append(name)
        return write_sample(out_dir, name, *args, **kwargs)

    monkeypatch.setattr(run_module, "write_sample", recording_write)
    caplog.clear()
    again = make_config(*CHEAP)  # max_images may grow: the run is extended by chelsea
    evaluate(again)
    assert written == ["coffee", "chelsea"]  # astronaut is not recomputed
    assert files_with_times(samples / "astronaut") == astronaut
    assert "1 already in" in caplog.text
    assert not list(samples.glob(".*tmp*"))
    rows = (out / "results.csv").read_text().splitlines()
    assert all(line.endswith(",3") for line in rows[1:] if ",piqe," in line)

    # the resumed run's tables are those of one uninterrupted run
    fresh = make_config(*CHEAP)
    fresh.output_dir = str(tmp_path / "fresh")
    assert (evaluate(fresh) / "results.csv").read_bytes() == (out / "results.csv").read_bytes()
    assert (Path(fresh.output_dir) / "results.md").read_bytes() == (out / "results.md").read_bytes()


def test_a_run_folder_keeps_one_config(make_config, caplog):
    cfg = make_config(*CHEAP, "eval.max_images=1", "eval.methods=[bicubic]")
    out = evaluate(cfg)
    stored = json.loads((out / "eval_record.json").read_text())["config"]
    assert stored["eval"]["methods"] == ["bicubic"]
    # how the run is done may change (device, batch size, figures, shards, more images); what it computes may not
    evaluate(make_config(*CHEAP, "eval.max_images=2", "eval.methods=[bicubic]", "eval.batch_size=1", "eval.device=cpu"))
    changed = make_config(*CHEAP, "eval.max_images=2", "eval.methods=[bicubic]", "eval.metrics=[piqe]")
    with pytest.raises(RecordMismatchError, match=r"eval\.metrics: \['piqe', 'psnr'\] -> \['piqe'\].*hydra\.run\.dir"):
        evaluate(changed)
    assert sorted(p.name for p in (out / "per-sample").iterdir()) == ["astronaut", "coffee"]


def test_a_rerun_with_another_zoom_centre_or_an_edited_centre_file_is_refused(make_config, tmp_path):
    centres = tmp_path / "centres.csv"
    centres.write_text("image,x,y\nastronaut,0.2,0.3\n")
    base = [*CHEAP, "eval.max_images=1", "eval.methods=[bicubic]", f"eval.zoom_centres={centres}"]
    out = evaluate(make_config(*base, "eval.zoom_centre=[0.4,0.6]"))
    evaluate(make_config(*base, "eval.zoom_centre=[0.4,0.6]", "eval.max_images=2"))  # the same centres: extended
    with pytest.raises(RecordMismatchError, match=r"eval\.zoom_centre: \[0\.4, 0\.6\] -> \[0\.6, 0\.4\]"):
        evaluate(make_config(*base, "eval.zoom_centre=[0.6,0.4]"))
    centres.write_text("image,x,y\nastronaut,0.25,0.3\n")
    with pytest.raises(RecordMismatchError, match=r"eval\.zoom_centres \(sha256\): '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        evaluate(make_config(*base, "eval.zoom_centre=[0.4,0.6]"))
    assert sorted(p.name for p in (out / "per-sample").iterdir()) == ["astronaut", "coffee"]


def test_where_the_judge_runs_may_change_what_it_is_may_not(make_config, tmp_path):
    from coz_train.eval.record import check_record, open_record

    out = tmp_path / "run"
    judge = ["eval/judge=tiny"]
    open_record(out, make_config(*CHEAP, *judge))
    check_record(out, make_config(*CHEAP, *judge, "eval.judge.batch_size=3", "eval.judge.device=cpu",
                                  f"eval.judge.cache_dir={tmp_path / 'cache'}", "eval.judge.retries=9"))
    with pytest.raises(RecordMismatchError, match=r"eval\.judge\.max_new_tokens"):
        check_record(out, make_config(*CHEAP, *judge, "eval.judge.max_new_tokens=3"))


def test_a_record_older_than_a_key_continues_where_the_key_keeps_its_results(make_config, tmp_path):
    from coz_train.eval.record import RECORD, check_record, open_record

    out = tmp_path / "run"
    open_record(out, make_config(*CHEAP, "eval.consistency_metrics=[]"))
    record = json.loads((out / RECORD).read_text())
    for key in ("consistency_metrics", "zoom_centre", "zoom_centres", "judge", "full_image"):
        del record["config"]["eval"][key]  # as a run folder made before these keys existed holds it
    (out / RECORD).write_text(json.dumps(record))
    check_record(out, make_config(*CHEAP, "eval.consistency_metrics=[]"))  # no judge, no full method, the centre
    for override, key in (("eval.consistency_metrics=[psnr]", "eval.consistency_metrics"),
                          ("eval.zoom_centre=[0.3,0.3]", "eval.zoom_centre"),
                          ("eval/judge=tiny", "eval.judge.")):
        with pytest.raises(RecordMismatchError, match=re.escape(key)):
            check_record(out, make_config(*CHEAP, "eval.consistency_metrics=[]", override))
    with pytest.raises(RecordMismatchError, match=r"eval\.full_image\.steps"):
        check_record(out, make_config(*CHEAP, "eval.consistency_metrics=[]",
                                      "eval.methods=[bicubic,onestep,recursive_multiscale,full]"))


def test_each_image_records_the_windows_its_chains_zoomed_into(tmp_path):
    """`windows.json`: each result's windows in the start's px, as the chains made them (the human study reads it)."""
    from PIL import Image

    from coz_train.eval.record import WINDOWS
    from coz_train.sr.backbones.resample import Resampler
    from coz_train.sr.chain import Chain, onestep_chains, recursive_chains, resample_chain, step_boxes, zoom_windows

    start, centre = Image.new("RGB", (128, 128), (90, 120, 150)), (0.25, 0.7)
    windows = zoom_windows(128, 4, 3, centre)
    bicubic, no_prompts = Resampler("bicubic", Image.BICUBIC), lambda items: [""] * len(items)
    chains = [resample_chain(start, "nearest", 4, 3, windows),
              onestep_chains([start], bicubic, 4, 3, no_prompts, "onestep-null", windows=[windows])[0],
              recursive_chains([start], bicubic, no_prompts, "recursive_multiscale-null", 4, 3,
                               boxes=[step_boxes(windows, 128, 4)])[0],
              Chain("hand-made", [start, start])]  # records no windows: left out
    write_sample(tmp_path, "astronaut", chains, [], {})
    recorded = json.loads((tmp_path / "per-sample" / "astronaut" / WINDOWS).read_text())
    expected = [list(w) for w in windows]
    assert recorded == {"start_size": 128, "windows": {"nearest": expected, "onestep-null": expected,
                                                       "recursive_multiscale-null": expected}}
    assert windows != zoom_windows(128, 4, 3)  # not the centre's
