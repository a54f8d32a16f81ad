"""Sharded evaluation: the split, array-style shards merged by the last one or by hand, and 2 CPU ranks
under `accelerate launch` writing exactly the single-process tables."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coz_train.eval import merge as merge_module
from coz_train.eval.merge import IncompleteRunError, merge
from coz_train.eval.record import recorded_config
from coz_train.eval.run import evaluate
from coz_train.eval.shards import Shard

REPO = Path(__file__).resolve().parents[2]
CHEAP = ["+experiment=smoke_eval", "eval/backbone=bicubic", "eval.methods=[bicubic,onestep,recursive_multiscale]",
         "eval.prompt_sources=[null,vlm]", "eval.metrics=[piqe,psnr]", "eval.steps=2",
         "eval.shipped_images=[astronaut,coffee,chelsea]"]
TABLES = ("results.csv", "results.md")


def test_every_image_goes_to_exactly_one_process():
    items = list(range(11))
    for tasks in (1, 2, 3):
        for world in (1, 2, 4):
            shares = [Shard(t, tasks, r, world).of_process(items) for t in range(tasks) for r in range(world)]
            assert sorted(i for share in shares for i in share) == items
    assert Shard(1, 2, 0, 1).of_process(items) == [1, 3, 5, 7, 9]
    assert Shard(1, 2, 1, 2).of_process(items) == [3, 7]  # rank 1's half of task 1's images
    assert Shard(0, 2, 0, 2).describe() == "shard 0 of 2, rank 0 of 2" and Shard(0, 1, 0, 1).describe() == "one process"


def test_bad_shard_keys_stop_before_anything_loads(make_config):
    for shard, count in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match=rf"eval\.shard={shard} of eval\.num_shards={count}"):
            evaluate(make_config(*CHEAP, f"eval.shard={shard}", f"eval.num_shards={count}"))


@pytest.fixture(scope="module")
def single(compose_cfg, tmp_path_factory):
    """The single-process run every sharded run is compared with (figures on: metrics.png, chains.png)."""
    return evaluate(compose_cfg(CHEAP, tmp_path_factory.mktemp("single")))


def test_array_shards_merge_into_the_single_process_tables(make_config, single, tmp_path, monkeypatch):
    first = make_config(*CHEAP, "eval.shard=0", "eval.num_shards=2")
    out = evaluate(first)
    assert sorted(p.name for p in (out / "per-sample").iterdir()) == ["astronaut", "chelsea"]
    assert not (out / "results.csv").exists()  # coffee is shard 1's
    with pytest.raises(IncompleteRunError, match=r"1 of 3 images have no result .*\(e\.g\. coffee\)"):
        merge(recorded_config(out))
    evaluate(make_config(*CHEAP, "eval.shard=1", "eval.num_shards=2"))  # the last shard merges
    for name in TABLES:
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    assert (out / "metrics.png").is_file()

    # by hand: python -m coz_train.eval.merge <run> (from the folder's record alone)
    for name in (*TABLES, "metrics.png"):
        (out / name).unlink()
    monkeypatch.setattr(sys, "argv", ["merge", str(out)])
    merge_module.main()
    for name in TABLES:
        assert (out / name).read_bytes() == (single / name).read_bytes(), name


@pytest.mark.slow
def test_two_cpu_ranks_write_exactly_the_single_process_tables(single, tmp_path):
    run = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COZ_PROGRESS_INTERVAL": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "coz_train.eval", *CHEAP,
         f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "Eval (rank 0 of 2): 2 of 3 images here" in output and "Eval (rank 1 of 2): 1 of 3 images here" in output
    for name in TABLES:
        assert (run / name).read_bytes() == (single / name).read_bytes(), name
    for png in (single / "per-sample").rglob("*/[0-9].png"):
        assert png.read_bytes() == (run / png.relative_to(single)).read_bytes(), png
    assert output.count("Results of 3 images") == 1  # rank 0 merged, once
