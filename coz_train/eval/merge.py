"""The tables and figures of an eval run, made from its per-sample record alone.

    python -m coz_train.eval.merge outputs/slurm-eval/<array job id>

Every run ends here: a single process once its images are done, rank 0 of an `accelerate launch`
once every rank's images are, and a SLURM array task when it finds every other task's images in
the record (the last to finish merges; two finishing together write the same files, each by an
atomic rename). By hand, this command merges a run folder whose shards have all finished (after
resubmitting a failed task, say); it reads the config from the folder's `eval_record.json`.

The scores are added image by image in the order of the sorted image list, whichever process
made them, so a sharded run writes the same `results.csv` and `results.md`, byte for byte, as
one process; then `metrics.png`, and the tables and figures to wandb when it is on.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from coz_train.cli import add_debug_switch, run_argparse
from coz_train.data.images import NoUsableImagesError, SkipReport
from coz_train.eval.images import EvalImage, eval_image_list
from coz_train.eval.methods import method_labels, zoom_scales
from coz_train.eval.record import is_finished, per_sample, read_sample, recorded_config, sample_dir
from coz_train.eval.tables import Results, Row, markdown, write_csv

log = logging.getLogger(__name__)


class IncompleteRunError(RuntimeError):
    pass


def missing_images(out: Path, images: list[EvalImage]) -> list[str]:
    return [image.name for image in images if not is_finished(out, image.name)]


def _atomic(path: Path, write: Any) -> None:
    """`write(tmp_path)`, then the temp file renamed onto `path`."""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def merge(cfg: DictConfig) -> list[Row]:
    """results.csv, results.md, metrics.png (and wandb) of the run in cfg.output_dir; its rows."""
    from coz_train.eval.figures import metric_plots
    from coz_train.eval.tables import higher_is_better  # the image-quality metrics' and the judge's directions

    ev, out = cfg.eval, Path(cfg.output_dir)
    images = eval_image_list(ev)
    missing = missing_images(out, images)
    if missing:
        raise IncompleteRunError(
            f"{len(missing)} of {len(images)} images have no result in {per_sample(out)} yet (e.g. {missing[0]}): "
            "run the shards that did not finish again (the same overrides; finished images are skipped), then merge."
        )
    results, unavailable, report, evaluated = Results(), {}, SkipReport(), []
    for image in images:
        sample = read_sample(out, image.name)
        if "skipped" in sample:
            report.skip(image.label, sample["skipped"]["reason"], sample["skipped"]["detail"])
            continue
        evaluated.append(image)
        for method, scale, metric, value in sample["scores"]:
            results.add(method, scale, metric, value)
        for name, reason in sample["unavailable"].items():
            unavailable.setdefault(name, reason)
    if report.total:
        log.warning("Skipped %d eval images: %s", report.total, report.summary())
    if not evaluated:
        raise NoUsableImagesError(f"No usable eval image ({report.summary()}): check eval.image_dir.")
    rows = results.rows()
    higher = {r.metric: higher_is_better(r.metric) for r in rows}
    _atomic(out / "results.csv", lambda p: write_csv(rows, p))
    text = markdown(rows, higher, unavailable, method_labels(ev), zoom_scales(ev))
    _atomic(out / "results.md", lambda p: p.write_text(text))
    if ev.figures:
        _atomic(out / "metrics.png", lambda p: metric_plots(rows, higher, p))
    log_to_wandb(cfg, out, rows, unavailable, [sample_dir(out, i.name) / "chains.png" for i in evaluated])
    log.info("Results of %d images: %s", len(evaluated), (out / "results.md").resolve())
    return rows


def log_to_wandb(cfg: DictConfig, out: Path, rows: list[Row], unavailable: dict[str, str], figures: list[Path]) -> None:
    """The results table, the metric plot and every sample's chain figure, when wandb is on."""
    from coz_train.wandb_setup import configure_wandb

    if configure_wandb(cfg) == ["none"]:
        return
    import wandb
    from omegaconf import OmegaConf

    name = cfg.logging.run_name or f"{cfg.experiment_name}-{out.name}"
    run = wandb.init(project=cfg.logging.project, name=name, dir=str(out), job_type="eval",
                     config=OmegaConf.to_container(cfg, resolve=True))
    table = wandb.Table(columns=["method", "scale", "metric", "mean", "std", "n"])
    for r in rows:
        table.add_data(r.method, r.scale, r.metric, r.mean, r.std, r.n)
    payload: dict[str, Any] = {"results": table}
    if unavailable:
        payload["unavailable_metrics"] = wandb.Table(columns=["metric", "reason"], data=[list(i) for i in unavailable.items()])
    if (out / "metrics.png").is_file():
        payload["metrics_vs_scale"] = wandb.Image(str(out / "metrics.png"))
    figures = [f for f in figures if f.is_file()]
    if figures:
        payload["chains"] = [wandb.Image(str(f), caption=f.parent.name) for f in figures]
    run.log(payload)
    run.finish()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    parser = argparse.ArgumentParser(description="Write results.csv / results.md / metrics.png of a sharded eval run.")
    parser.add_argument("run_dir", help="the eval run folder (holds eval_record.json and per-sample/)")
    add_debug_switch(parser)
    args = parser.parse_args(argv)
    cfg = recorded_config(Path(args.run_dir))
    cfg.output_dir = str(args.run_dir)  # the folder may have moved since
    merge(cfg)
    print(Path(args.run_dir) / "results.md")  # the path, for scripts


if __name__ == "__main__":
    run_argparse(main)
