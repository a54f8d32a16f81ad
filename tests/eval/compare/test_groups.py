"""Seed replicates: eval runs of adapters whose training runs differ only in their seed are one group, found from
the training runs' configs; another setting, the same seeds twice, or an adapter without its training config
are not grouped with them; --group and --no-seed-groups decide by hand."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from coz_train.eval.compare.groups import group_runs, identity, training_config
from coz_train.eval.compare.runs import EvalRun

SOURCES = "eval.prompt_sources=[vlm,vlm+adapter]"


def training_run(compose_cfg, root: Path, name: str, *overrides: str) -> Path:
    """A training run folder as `python -m coz_train` leaves it: .hydra/config.yaml and adapter/."""
    folder = root / name
    cfg = compose_cfg(["+experiment=smoke", *overrides], folder)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / "adapter").mkdir()
    return folder / "adapter"


def eval_run(compose_cfg, root: Path, name: str, *overrides: str) -> EvalRun:
    """An eval run's record (its config and the result names it would have) for the vlm and vlm+adapter chains."""
    cfg = compose_cfg(["+experiment=smoke_eval", "eval.methods=[recursive_multiscale]", SOURCES, *overrides],
                      root / name)
    config = OmegaConf.to_container(cfg, resolve=True)
    scores = {(f"recursive_multiscale-{s}", 4, "piqe"): {"0001": 50.0} for s in ("vlm", "vlm+adapter")}
    return EvalRun(root / name, config, scores, ("0001",), name)


def test_adapters_of_training_runs_that_differ_only_in_their_seed_are_one_group(compose_cfg, tmp_path, caplog):
    adapters = {s: training_run(compose_cfg, tmp_path, f"train{s}", f"seed={s}") for s in (1, 2, 3)}
    other = training_run(compose_cfg, tmp_path, "train_lr", "seed=1", "grpo.learning_rate=0.0002")
    assert training_config(adapters[1])["seed"] == 1
    runs = [eval_run(compose_cfg, tmp_path, f"eval{s}", f"eval.adapter={adapters[s]}") for s in (1, 2, 3)]
    runs.append(eval_run(compose_cfg, tmp_path, "eval_lr", f"eval.adapter={other}"))
    runs.append(eval_run(compose_cfg, tmp_path, "eval1_again", f"eval.adapter={adapters[1]}"))  # a repeat of eval1
    assert identity(runs[0]).seed_label() == "train seed 1, eval seed 0"
    assert identity(runs[0]).subject == identity(runs[2]).subject != identity(runs[3]).subject
    caplog.set_level(logging.WARNING)
    groups = group_runs(runs, {})
    # eval1 and eval1_again evaluate the same adapter with the same seeds: repeats, so nothing is grouped with them
    assert [(g.name, [r.name for r in g.runs]) for g in groups] == [
        ("eval1", ["eval1"]), ("eval2", ["eval2"]), ("eval3", ["eval3"]), ("eval_lr", ["eval_lr"]),
        ("eval1_again", ["eval1_again"])]
    assert "repeats, not seed replicates" in caplog.text
    groups = group_runs(runs[:4], {})
    assert [(g.name, [r.name for r in g.runs]) for g in groups] == [
        ("smoke/adapter", ["eval1", "eval2", "eval3"]), ("eval_lr", ["eval_lr"])]
    assert groups[0].seeds == ("train seed 1, eval seed 0", "train seed 2, eval seed 0", "train seed 3, eval seed 0")
    assert [g.name for g in group_runs(runs[:4], {}, seed_groups=False)] == ["eval1", "eval2", "eval3", "eval_lr"]
    explicit = group_runs(runs[:4], {"lr": [runs[3], runs[0]]})
    assert [(g.name, [r.name for r in g.runs], g.explicit) for g in explicit] == [
        ("lr", ["eval_lr", "eval1"], True), ("smoke/adapter", ["eval2", "eval3"], False)]


def test_an_adapter_without_its_training_config_is_known_by_its_path(compose_cfg, tmp_path):
    released = tmp_path / "Chain-of-Zoom" / "ckpt" / "VLM_LoRA" / "checkpoint-10000"
    released.mkdir(parents=True)
    runs = [eval_run(compose_cfg, tmp_path, f"released_s{s}", f"eval.adapter={released}", f"seed={s}")
            for s in (0, 1)]
    runs.append(eval_run(compose_cfg, tmp_path, "base", "eval.prompt_sources=[vlm]", f"eval.adapter={released}"))
    runs[2].scores.pop(("recursive_multiscale-vlm+adapter", 4, "piqe"))  # no adapter chain: the adapter is no subject
    groups = group_runs(runs, {})
    assert [(g.name, g.seeds) for g in groups] == [("released_s", ("eval seed 0", "eval seed 1")),
                                                    ("base", ("eval seed 0",))]
