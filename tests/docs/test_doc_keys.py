"""Config keys named in hand-written pages exist in a schema (coz_train.docs_reference.doc_keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coz_train.docs_reference.doc_keys import named_keys, unknown_keys

REPO = Path(__file__).resolve().parents[2]
PAGES = [
    REPO / "README.md",
    REPO / "CONTRIBUTING.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "recipes").glob("*.md")),
    REPO / "slurm" / "README.md",
]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_key_a_page_names_exists(page):
    unknown = unknown_keys(page.read_text())
    assert not unknown, "\n".join(f"{page.name}:{u.line}: `{u.key}` (closest: {', '.join(u.closest)})" for u in unknown)


def test_a_renamed_key_is_found_with_its_closest():
    text = "Set `data.upscalr=realesrgan_x4plus`, then `grpo.max_steps=10` and `study.checks.repeats`.\n"
    (unknown,) = unknown_keys(text)
    assert (unknown.line, unknown.key) == (1, "data.upscalr") and "data.upscaler" in unknown.closest


def test_what_is_not_a_key():
    text = "\n".join(
        [
            "`study.sqlite`, `eval.log` and `server.json` are files; `rewards/<name>/mean` is a log key;",
            "`data.backbone.*` is a pattern; `coz_train.eval.merge` is a module; `hydra.run.dir` is Hydra's.",
            "```bash",
            "python -m coz_train data.upscalr=x",
            "```",  # code blocks: the command check's
        ]
    )
    assert named_keys(text) == []


def test_reward_parameters_and_the_study_schema_are_keys():
    text = (
        "`rewards.repetition.n`, `rewards.sr_quality.backbone.lora_dir`, `+rewards.critic.weight=0`, `analyze.n_boot`"
    )
    assert [k for _, k in named_keys(text)] == [
        "rewards.repetition.n",
        "rewards.sr_quality.backbone.lora_dir",
        "rewards.critic.weight",
        "analyze.n_boot",
    ]
    assert unknown_keys(text) == []
    assert [u.key for u in unknown_keys("`rewards.repetition.k`")] == ["rewards.repetition.k"]
