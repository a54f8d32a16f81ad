"""The analysis in a wandb run: tables of every number, headline scalars and the figure.

`log_to_wandb(results, run)` logs into a run the caller opened (and finishes): tables `study/mos`,
`study/comparisons`, `study/bradley_terry` (pairwise studies) and `study/screening`, each with a `raters`
column ("screened" or "all"); scalars `study/<test>/mos/<condition>`, `study/<test>/alpha`,
`study/<test>/bt/<condition>`, `study/raters`, `study/flagged` for the study's result; `study/figure`.
"""

from __future__ import annotations

import io
from typing import Any

from coz_train.study.analysis.report import csv_rows
from coz_train.study.analysis.results import Results

TABLES = {
    "study/mos": ("mos", ("raters", "primary", "test", "condition", "estimate", "sd", "ci_low", "ci_high",
                          "n_ratings", "n_raters", "n_items")),
    "study/comparisons": (("mos_difference", "bt_difference"),
                          ("raters", "primary", "test", "section", "condition", "versus", "estimate", "ci_low",
                           "ci_high", "n_raters", "p", "p_holm", "stars")),
    "study/bradley_terry": ("bradley_terry", ("raters", "primary", "test", "condition", "estimate", "ci_low",
                                              "ci_high", "n_raters", "n_items")),
    "study/screening": ("screening", ("condition", "n_ratings", "note")),
}


def scalars(results: Results) -> dict[str, float]:
    out: dict[str, float] = {"study/raters": len(results.raters), "study/flagged": len(results.flags)}
    for test, t in results.tests.items():
        for m in t.mos:
            out[f"study/{test}/mos/{m.condition}"] = m.mos
        if t.mos:
            out[f"study/{test}/alpha"] = t.alpha
        if t.bradley_terry is not None:
            for c, s in zip(t.bradley_terry.conditions, t.bradley_terry.scores, strict=True):
                out[f"study/{test}/bt/{c}"] = s
    return out


def log_to_wandb(results: Results, run: Any) -> None:
    import wandb
    from PIL import Image

    from coz_train.study.analysis.figure import png_bytes

    rows = csv_rows(results)
    payload: dict[str, Any] = dict(scalars(results))
    for key, (sections, columns) in TABLES.items():
        wanted = (sections,) if isinstance(sections, str) else sections
        data = [[row[c] for c in columns] for row in rows if row["section"] in wanted]
        if data:
            names = ["rater" if c == "condition" and key == "study/screening" else c for c in columns]
            payload[key] = wandb.Table(columns=names, data=data)
    figure = Image.open(io.BytesIO(png_bytes(results))).convert("RGB")
    payload["study/figure"] = wandb.Image(figure, caption=f"with {results.label()}")
    run.log(payload)
