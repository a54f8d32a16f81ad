"""`python -m coz_train.study build | serve | invite | analyze ...`: the paper's human preference study.

    python -m coz_train.study build <eval run> [<eval run> ...] study.name=<name> [key=value ...]
    python -m coz_train.study serve <study folder> [server.port=8765] [server.host=...] [server.base_url=...]
    python -m coz_train.study invite <study folder> [invite.raters=5]
    python -m coz_train.study analyze <study folder> [analyze.drop_flagged=false] [logging.wandb=true]

Each command composes `conf/study.yaml` (schema: `coz_train.study.config`) with the `key=value` overrides
(Hydra's override grammar: any argument that looks like `key=value`, `+key=value` or `~key`); the other
arguments are the command's folders. `build` writes the study folder (`coz_train.study.build`), `serve`
runs the rating app (`coz_train.study.serve`), `invite` adds raters, `analyze` reads every answer from the
store and writes the analysis (`coz_train.study.analysis`) to `<study>/results/`.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from coz_train.cli import error_line, hydra_full_error, report

log = logging.getLogger("coz_train.study")
COMMANDS = ("build", "serve", "invite", "analyze")
OVERRIDE = re.compile(r"^(~[\w.]+|[+]{0,2}[\w.]+=.*)$", re.S)
USAGE = __doc__.split("\n\n")[1]


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(folders, overrides)."""
    overrides = [a for a in args if OVERRIDE.match(a)]
    return [a for a in args if not OVERRIDE.match(a)], overrides


def analyze_study(study_dir: str | Path, cfg: DictConfig) -> dict:
    """Every answer from the store through the study analysis; results written, optionally logged to wandb."""
    from coz_train.study.analysis import analyze, log_to_wandb, write_results
    from coz_train.study.build import read_manifest
    from coz_train.study.store import Store

    folder = Path(study_dir).expanduser().resolve()
    manifest = read_manifest(folder)
    store = Store(folder / "study.sqlite")
    try:
        ratings = store.ratings()
    finally:
        store.close()
    if not ratings:
        raise ValueError(f"{folder}: no answers yet; serve the study (python -m coz_train.study serve {folder}) "
                         "and send raters their links first.")
    settings = cfg.analyze
    results = analyze(ratings, conditions=list(manifest["conditions"]), drop_flagged=settings.drop_flagged,
                      n_boot=settings.n_boot, seed=settings.seed)
    out = Path(settings.out).expanduser() if settings.out else folder / "results"
    out.mkdir(parents=True, exist_ok=True)
    paths = write_results(results, out, ratings)
    wandb_run(cfg, out, manifest, results, log_to_wandb)
    log.info("%d ratings from %d raters analysed; results in %s", len(ratings), len({r.rater for r in ratings}), out)
    for path in paths.values() if isinstance(paths, dict) else paths:
        log.info("  %s", path)
    return {"results": results, "paths": paths, "out": out}


def wandb_run(cfg: DictConfig, out: Path, manifest: dict, results, log_to_wandb) -> None:
    """The results to a wandb run of job_type=study when logging is on (offline without credentials)."""
    from coz_train.wandb_setup import configure_wandb

    if configure_wandb(OmegaConf.create({"logging": cfg.logging, "output_dir": str(out)})) == ["none"]:
        return
    import wandb

    name = cfg.logging.run_name or f"{cfg.experiment_name}-{manifest['name']}"
    settings = {"analyze": OmegaConf.to_container(cfg.analyze), "study": manifest["config"]["study"]}  # as built
    run = wandb.init(project=cfg.logging.project, name=name, dir=str(out), job_type="study", config=settings)
    log_to_wandb(results, run)
    run.finish()


def run(command: str, folders: list[str], overrides: list[str]) -> object:
    from coz_train.study.config import load_config

    cfg = load_config(overrides)
    if command == "build":
        from coz_train.study.build import build

        return build(folders, cfg)
    if len(folders) != 1:
        raise ValueError(f"`{command}` takes one study folder, got {folders or 'none'}: "
                         f"python -m coz_train.study {command} <study folder> [key=value ...]")
    if command == "serve":
        from coz_train.study.serve import serve

        return serve(folders[0], cfg)
    if command == "invite":
        from coz_train.study.build import invite

        return invite(folders[0], cfg)
    return analyze_study(folders[0], cfg)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        sys.stderr.write(f"usage:\n{USAGE}\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folders, overrides = split_args(args[1:])
    if args[0] == "build" and not any(o.startswith("study.name=") for o in overrides):
        error_line("build needs study.name=<name> (the study folder is studies/<name>).")
        return 2
    try:
        run(args[0], folders, overrides)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if not report(err, full=hydra_full_error(), hint="HYDRA_FULL_ERROR=1 shows the traceback",
                      own=(HydraException, OmegaConfBaseException)):  # the overrides' config errors
            raise
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
