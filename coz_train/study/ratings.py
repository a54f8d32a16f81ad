"""One rating as the store hands it to the analysis: the row format of `ratings.csv`.

A rating is either an absolute-category score (`kind="mos"`: one condition, `score` 1..5, ITU-T P.910's
5 Excellent ... 1 Bad) or a pairwise choice (`kind="pair"`: two conditions of the same item side by side,
`choice` "left", "right" or "unsure"). `test` is "image" (quality of the zoomed result) or "text" (how well
the prompt describes the zoomed content). `check` marks the hidden screening items: "" for an ordinary
item, "repeat" for the second showing of an item the rater saw before (`repeat_of` names the first
showing's `task`), "control" for a clearly degraded control (e.g. `nearest` at 256x). A pairwise control
names its degraded side's condition in `condition` (the analysis skips pairwise controls without it).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path

KINDS = ("mos", "pair")
TESTS = ("image", "text")
CHOICES = ("left", "right", "unsure")
CHECKS = ("", "repeat", "control")
SCALE = (1, 5)


@dataclass(frozen=True)
class Rating:
    rater: str            # rater id (never the invitation token)
    task: str             # the task id the rater answered (unique per rater and showing)
    test: str             # "image" | "text"
    kind: str             # "mos" | "pair"
    item: str             # the (image, scale) item, e.g. "0003@16x"
    scale: int            # zoom factor of the item (4, 16, 64, 256)
    condition: str = ""   # mos: the rated condition; pair with check "control": the degraded side's condition
    score: int | None = None            # mos: 1..5
    condition_left: str = ""            # pair: the condition shown on the left
    condition_right: str = ""           # pair: the condition shown on the right
    choice: str = ""                    # pair: "left" | "right" | "unsure"
    check: str = ""                     # "" | "repeat" | "control"
    repeat_of: str = ""                 # check == "repeat": the task id of the first showing
    answered_at: float = 0.0            # unix time of the (last) answer
    seconds: float = 0.0                # time the rater spent on the task

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.test not in TESTS or self.check not in CHECKS:
            raise ValueError(f"rating {self.task}: kind/test/check must be in {KINDS}/{TESTS}/{CHECKS}, "
                             f"got {self.kind!r}/{self.test!r}/{self.check!r}")
        if self.kind == "mos" and (self.score is None or not SCALE[0] <= self.score <= SCALE[1]):
            raise ValueError(f"rating {self.task}: a mos score must be in {SCALE[0]}..{SCALE[1]}, got {self.score!r}")
        if self.kind == "pair" and self.choice not in CHOICES:
            raise ValueError(f"rating {self.task}: a pair choice must be one of {CHOICES}, got {self.choice!r}")

    @property
    def winner(self) -> str:
        """pair: the condition chosen ("" for "unsure")."""
        return {"left": self.condition_left, "right": self.condition_right}.get(self.choice, "")


FIELDS = tuple(f.name for f in fields(Rating))


def write_csv(ratings: list[Rating], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in ratings:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    return path


def read_csv(path: str | Path) -> list[Rating]:
    out = []
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            out.append(Rating(**{**row, "scale": int(row["scale"]),
                                 "score": int(row["score"]) if row["score"] else None,
                                 "answered_at": float(row["answered_at"] or 0), "seconds": float(row["seconds"] or 0)}))
    return out
