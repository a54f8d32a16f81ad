"""`eval.judge` checked before any model loads (called by `coz_train.eval.methods.check_eval_config`)."""

from __future__ import annotations

import string

from omegaconf import DictConfig

SERVER = "server"


def judge_enabled(section: DictConfig | None) -> bool:
    """Whether `eval.judge` names a judge model (null: no judge, the default)."""
    return section is not None and bool(section.get("name_or_path"))


def check_judge(section: DictConfig | None) -> None:
    """Every `eval.judge` setting that can be checked without loading the judge; nothing when it is off."""
    if section is None:
        return
    if not judge_enabled(section):
        if section.get("url"):
            raise ValueError(
                f"eval.judge.url={section.url} is set but eval.judge.name_or_path is null, so no judge "
                "would run: name the judge model (the served model's hub id; the answer cache is keyed "
                "by it), e.g. eval/judge=internvl3_5_38b, or drop eval.judge.url."
            )
        return
    from coz_train.rewards.critic import BACKENDS

    if section.backend not in BACKENDS:
        raise ValueError(
            f"eval.judge.backend='{section.backend}' is not one of {sorted(BACKENDS)} (the critic's "
            "backends, coz_train/rewards/critic/)."
        )
    if section.scoring not in ("generate", "logits"):
        raise ValueError(
            f"eval.judge.scoring='{section.scoring}' must be 'generate' (the first number the judge "
            "writes) or 'logits' (the expected answer over the answer tokens)."
        )
    if section.backend == "internvl_remote" and section.scoring != "generate":
        raise ValueError("eval.judge.backend=internvl_remote supports eval.judge.scoring=generate only.")
    for key, low in (("score_max", 1), ("batch_size", 1), ("max_new_tokens", 1)):
        if section[key] < low:
            raise ValueError(f"eval.judge.{key}={section[key]} must be at least {low}.")
    check_instruction(section)
    if section.backend == SERVER:
        check_server(section)
    else:
        from coz_train.hub import locate_model

        locate_model(section.name_or_path, "eval.judge.name_or_path", section.revision)


def check_instruction(section: DictConfig) -> None:
    """The question is not empty, names no placeholder but `{score_max}`, and asks for 0..score_max."""
    from coz_train.eval_sections import JUDGE_QUESTION

    text = section.instruction
    if not text or not text.strip():
        raise ValueError(
            "eval.judge.instruction is empty: give the question the judge answers (the default asks "
            "for 1 = hallucinating, 0 = not)."
        )
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as err:
        raise ValueError(
            f"eval.judge.instruction cannot be formatted ({err}): write a literal brace as {{{{ or }}}}."
        ) from None
    if fields - {"score_max"}:
        raise ValueError(
            f"eval.judge.instruction has the placeholder(s) {sorted(fields - {'score_max'})}: only "
            "{score_max} is filled in (the question is the same for every pair)."
        )
    if section.score_max != 1 and text == JUDGE_QUESTION:
        raise ValueError(
            f"eval.judge.score_max={section.score_max}, but eval.judge.instruction is the default "
            "question, which asks for 0 or 1: give a question asking for an integer 0..{score_max} "
            "(0 = faithful), or keep eval.judge.score_max=1."
        )


def check_server(section: DictConfig) -> None:
    url = section.url
    if not url:
        raise ValueError(
            "eval.judge.backend=server needs eval.judge.url, the judge server's address (e.g. "
            "http://127.0.0.1:8001; vLLM or python -m coz_train.critic_server, see docs/judge.md)."
        )
    if not str(url).startswith(("http://", "https://")):
        raise ValueError(f"eval.judge.url='{url}' must start with http:// or https://.")
    if section.timeout_s <= 0 or section.retries < 0 or section.concurrency < 1:
        raise ValueError(
            f"eval.judge: timeout_s={section.timeout_s} must be > 0, retries={section.retries} >= 0 "
            f"and concurrency={section.concurrency} >= 1."
        )
