"""The command end to end on real eval runs: a planted difference is found with its sign, seed replicates with
nothing planted give no verdict, a difference in one seed only is not a verdict, other protocols are refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from coz_train.cli import run_argparse
from coz_train.eval.compare.__main__ import main
from coz_train.eval.compare.report import CSV_COLUMNS

NULL, VLM = "recursive_multiscale-null", "recursive_multiscale-vlm"
BLUR = 1.5    # px: the planted degradation
NOISE = 2.0   # grey levels: the run-to-run variation of a seed
GRAINED = {NULL: NOISE, VLM: NOISE}


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "compare.csv").open() as f:
        return list(csv.DictReader(f))


def compare(tmp_path: Path, *args: str) -> list[dict[str, str]]:
    out = main([*args, "--metrics", "brisque", "piqe", "--out", str(tmp_path / "cmp"), "--n-boot", "1000"])
    return rows(out)


def test_a_degraded_run_is_worse_than_its_original_with_the_right_sign(smoke_run, derive, tmp_path):
    planted = derive("planted", blur={VLM: BLUR})
    table = compare(tmp_path, str(smoke_run), str(planted), "--baseline", str(smoke_run))
    assert {r["method_a"] for r in table} == {VLM}  # across runs: only the prompted chains can differ
    assert {(r["a"], r["b"]) for r in table} == {("planted", "smoke")}
    brisque = {int(r["scale"]): r for r in table if r["metric"] == "brisque"}
    assert sorted(brisque) == [4, 16]
    for scale in (4, 16):  # blur raises BRISQUE (lower is better): the planted run is worse
        r = brisque[scale]
        assert r["verdict"] == "single-seed" and r["better"] == "b", r
        assert float(r["mean_diff"]) > 0 and float(r["ci_low"]) > 0 and float(r["p_holm"]) < 0.05
        assert r["n"] == "12" and r["seeds"] == "1" and r["higher_is_better"] == "0"
    text = (tmp_path / "cmp" / "compare.md").read_text()
    verdicts = text.split("## Verdicts")[1].split("##")[0]
    assert "- smoke beats planted with recursive_multiscale-vlm on BRISQUE at 16x (lower is better): -" in verdicts
    assert "single-seed verdict" in verdicts
    assert list(table[0]) == list(CSV_COLUMNS)
    assert Image.open(tmp_path / "cmp" / "compare.png").size[1] > 300


def test_within_a_run_the_degraded_method_loses_and_identical_ones_do_not_differ(smoke_run, derive, tmp_path):
    planted = derive("planted", blur={VLM: BLUR})
    every = compare(tmp_path / "every", str(planted), "--baseline", NULL)
    assert {(r["a"], r["b"]) for r in every} == {(VLM, NULL), ("bicubic", NULL)}  # every other method against it
    table = compare(tmp_path, str(planted), "--baseline", NULL, "--methods", VLM)
    assert {(r["a"], r["b"]) for r in table} == {(VLM, NULL)}
    assert all(r["better"] == "b" for r in table if r["verdict"] != "no difference")
    assert any(r["verdict"] == "single-seed" for r in table if r["metric"] == "brisque")
    # the bicubic backbone ignores prompts: the null and VLM chains of the smoke run are the same images
    same = compare(tmp_path / "same", str(smoke_run), "--baseline", NULL, "--methods", VLM)
    assert {r["verdict"] for r in same} == {"no difference"}
    assert all(float(r["mean_diff"]) == 0 for r in same)


def test_seed_replicates_with_nothing_planted_give_no_verdict(derive, tmp_path):
    seeds = [derive(f"seed{s}", seed=s, noise=GRAINED) for s in (1, 2, 3)]
    table = compare(tmp_path, *map(str, seeds), "--baseline", NULL, "--methods", VLM)
    assert {r["group_a"] for r in table} == {"seed"}  # one group: the runs differ only in their eval seed
    assert {r["seeds"] for r in table} == {"3"}
    assert {r["verdict"] for r in table} == {"no difference"}, [(r["metric"], r["scale"], r["p_holm"]) for r in table]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "No difference holds" in md and "eval seed 1; eval seed 2; eval seed 3" in md


def test_a_difference_in_every_seed_holds_and_in_one_seed_only_does_not(derive, tmp_path):
    planted = [derive(f"planted{s}", seed=s, noise=GRAINED, blur={VLM: BLUR}) for s in (1, 2, 3)]
    table = compare(tmp_path, *map(str, planted), "--baseline", NULL, "--methods", VLM)
    brisque = {int(r["scale"]): r for r in table if r["metric"] == "brisque"}
    for scale in (4, 16):
        assert brisque[scale]["verdict"] == "holds" and brisque[scale]["better"] == "b", brisque[scale]
        assert brisque[scale]["seeds_holding"] == "3"
        assert abs(float(brisque[scale]["mean_diff"])) > float(brisque[scale]["seed_spread"])
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "- recursive_multiscale-null beats recursive_multiscale-vlm on BRISQUE at 16x" in md
    assert "holds in 3 of 3 seeds" in md

    unplanted = [derive(f"seed{s}", seed=s, noise=GRAINED) for s in (2, 3)]
    group = "mixed=" + ",".join(map(str, [planted[0], *unplanted]))
    mixed = compare(tmp_path / "mixed", "--group", group, "--baseline", NULL, "--methods", VLM)
    assert {r["group_a"] for r in mixed} == {"mixed"}
    assert not [r for r in mixed if r["verdict"] in ("holds", "single-seed")]  # pooled it may be significant...
    for r in (r for r in mixed if r["metric"] == "brisque"):  # ...but it holds in the planted seed only
        assert r["verdict"] == "seed-dependent" and r["seeds_holding"] == "1", r
    assert "holds in 1 of 3 seeds only: not a verdict" in (tmp_path / "mixed" / "cmp" / "compare.md").read_text()


def test_runs_of_another_protocol_or_too_few_common_images_are_refused(smoke_run, run_smoke, tmp_path, capsys):
    other = run_smoke("three_steps", "eval.steps=3", "eval.max_images=3")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_argparse(main, [str(smoke_run), str(other), "--out", str(tmp_path / "x")])
    assert stop.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("Error: The runs were evaluated under different protocols")
    assert "eval.steps: 2 in smoke, 3 in three_steps" in error and "--ignore-key" in error
    assert not (tmp_path / "x").exists()

    few = run_smoke("three_images", "eval.max_images=3")  # eval.max_images only says how much of the list is done
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_argparse(main, [str(smoke_run), str(few), "--out", str(tmp_path / "y")])
    error = capsys.readouterr().err
    assert "Only 3 images are common to all runs (smoke: 12, three_images: 3)" in error and "--min-images" in error
