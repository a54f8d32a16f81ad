"""python -m coz_train.critic_convert <InternVL2.5 folder> <out folder> [--max-tiles N] [--dtype D] [--debug]"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from coz_train.cli import add_debug_switch, fail, run_argparse
from coz_train.rewards.critic.conversion.build import convert


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coz_train.critic_convert",
                                     description="Convert an InternVL2.5 checkpoint (hub layout) to the native -hf one.")
    parser.add_argument("folder", type=Path, help="a local InternVL2.5 folder, e.g. a download of OpenGVLab/InternVL2_5-8B")
    parser.add_argument("out", type=Path, help="where the converted checkpoint is written")
    parser.add_argument("--max-tiles", type=int, default=6, help="448-px tiles per image, + a thumbnail (default 6)")
    parser.add_argument("--dtype", default=None, help="cast the weights (e.g. bfloat16); default: as stored")
    add_debug_switch(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.folder / "config.json").is_file():
        fail(f"{args.folder} has no config.json: give a local checkpoint folder "
             "(huggingface-cli download OpenGVLab/InternVL2_5-8B --local-dir <folder>).")
    convert(args.folder, args.out, max_tiles=args.max_tiles, dtype=args.dtype)


if __name__ == "__main__":
    run_argparse(main)
