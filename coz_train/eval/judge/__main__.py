"""`python -m coz_train.eval.judge <run> [eval/judge=<preset>] [eval.judge.<key>=<value> ...]`: judge a finished
evaluation's run folder for hallucinations and make its tables again (`run_folder.py`, docs/judge.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from coz_train.cli import add_debug_switch, run_argparse
from coz_train.eval.record import recorded_config


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    parser = argparse.ArgumentParser(
        description="Judge the zoomed outputs of an eval run folder for hallucinations "
        "(metric `hallucination`, lower is better) and write its tables again."
    )
    parser.add_argument("run_dir", help="the eval run folder (holds eval_record.json and per-sample/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="eval/judge=<preset> (conf/eval/judge/) and "
        "eval.judge.<key>=<value>; default: the folder's own eval.judge",
    )
    add_debug_switch(parser)
    args = parser.parse_args(argv)
    from coz_train.eval.judge.run_folder import judge_run, judge_section

    run_dir = Path(args.run_dir)
    section = judge_section(recorded_config(run_dir).eval.get("judge"), args.overrides)
    judge_run(run_dir, section)
    print(run_dir / "results.md")  # the path, for scripts


if __name__ == "__main__":
    run_argparse(main)
