"""write_results: every file exists and parses; the figure is a real PNG; log_to_wandb in offline mode."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coz_train.study.analysis import analyze, log_to_wandb, write_results
from coz_train.study.analysis.report import CSV_COLUMNS
from coz_train.study.analysis.simulate import ScoreModel, simulate_mos, simulate_pairs
from coz_train.study.ratings import read_csv

ORDER = ["Single", "Multiple", "GRPO"]


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(0)
    ratings = simulate_mos(ScoreModel(dict(zip(ORDER, (2.96, 3.56, 3.86), strict=True))), 12, 12, rng,
                           careless={"careless": "random"})
    ratings += simulate_mos(ScoreModel(dict(zip(ORDER, (2.30, 2.70, 4.24), strict=True))), 12, 12, rng, test="text",
                            careless={"careless": "random"})
    ratings += simulate_pairs(dict(zip(ORDER, (-0.6, 0.0, 0.6), strict=True)), 8, 6, rng, unsure=0.1)
    return ratings, analyze(ratings, conditions=ORDER, n_boot=100)


def test_files_exist_and_parse(study, tmp_path: Path) -> None:
    ratings, results = study
    assert [f.rater for f in results.flags] == ["careless"]
    paths = write_results(results, tmp_path / "analysis", ratings)
    assert set(paths) == {"results.md", "results.csv", "ratings.csv", "results.png"}
    assert all(p.is_file() and p.parent == tmp_path / "analysis" for p in paths.values())

    with paths["results.csv"].open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    mos = {(r["raters"], r["test"], r["condition"]): r for r in rows if r["section"] == "mos"}
    assert {k[0] for k in mos} == {"screened", "all"}  # both analyses, the screened one primary
    primary = [r for r in rows if r["section"] == "mos" and r["primary"] == "1"]
    assert {r["raters"] for r in primary} == {"screened"} and len(primary) == 6
    expected = {m.condition: m for m in results.tests["image"].mos}
    for condition in ORDER:
        row = mos[("screened", "image", condition)]
        assert float(row["estimate"]) == pytest.approx(expected[condition].mos)
        assert float(row["ci_low"]) <= float(row["estimate"]) <= float(row["ci_high"])
        assert int(row["n_ratings"]) == expected[condition].n_ratings
    stars = {r["stars"] for r in rows if r["section"] == "mos_difference"}
    assert stars <= {"ns", "*", "**", "***", "n/a"} and stars
    assert {r["section"] for r in rows} >= {"agreement", "bradley_terry", "win_rate", "bt_difference", "screening"}
    (flag,) = [r for r in rows if r["section"] == "screening"]
    assert flag["condition"] == "careless" and flag["note"].startswith("agreement:")

    assert read_csv(paths["ratings.csv"]) == ratings  # every rating, checks included, round-trips

    md = paths["results.md"].read_text()
    for text in ("## Image quality MOS", "## Text MOS", "## The same with all raters", "## Screening",
                 "Krippendorff's alpha (interval)", "Bradley-Terry", "careless", "| Single |"):
        assert text in md

    assert paths["results.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(paths["results.png"]) as image:
        assert image.format == "PNG" and image.width > 1000 and image.height > 300
        assert len(set(image.convert("L").getdata())) > 20  # drawn, not blank


def test_kept_analysis_is_primary_when_flagged_raters_are_kept(study, tmp_path: Path) -> None:
    ratings, _ = study
    results = analyze(ratings, conditions=ORDER, n_boot=20, drop_flagged=False)
    paths = write_results(results, tmp_path, ratings)
    md = paths["results.md"].read_text()
    assert "the tables below are with all raters" in md and "## The same with flagged raters dropped" in md
    with paths["results.csv"].open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["section"] == "mos" and r["primary"] == "1"]
    assert {r["raters"] for r in rows} == {"all"}


def test_log_to_wandb_offline(study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, results = study
    run = wandb.init(project="coz-train-study-test", dir=str(tmp_path), mode="offline")
    try:
        log_to_wandb(results, run)
        summary = dict(run.summary)
    finally:
        run.finish()
    assert summary["study/raters"] == len(results.raters) and summary["study/flagged"] == 1
    assert summary["study/image/mos/GRPO"] == pytest.approx(results.tests["image"].mos[2].mos)
    assert math.isfinite(summary["study/text/alpha"])
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    images = list(run_dir.glob("files/media/images/**/*.png"))  # study/figure_*.png
    assert images and images[0].read_bytes()[:4] == b"\x89PNG"
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in run_dir.glob("files/media/table/**/*.table.json")}
    assert {"mos", "comparisons", "bradley", "screening"} <= set(tables), sorted(tables)
    mos = tables["mos"]
    assert {row[mos["columns"].index("condition")] for row in mos["data"]} == set(ORDER)


def test_long_condition_names_are_broken_into_lines_at_their_separators():
    from coz_train.study.analysis.figure import tick_label

    assert tick_label("nearest") == "nearest"
    assert tick_label("recursive_multiscale-vlm") == "recursive_\nmultiscale-vlm"
    assert all(len(line) <= 14 for line in tick_label("recursive_multiscale-vlm+adapter").splitlines())
    assert tick_label("recursive_multiscale-vlm+adapter").replace("\n", "") == "recursive_multiscale-vlm+adapter"
