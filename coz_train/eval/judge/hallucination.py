"""The hallucination judge: a critic backend asked the fixed question, batched, each answer cached.

The backend is the critic's (`coz_train.rewards.critic.load_critic_backend`) built from `eval.judge`, whose keys
are the critic's wherever they mean the same; the judge hands it [wider view, zoomed output] and an empty prompt
text (the question names no prompt), and gets one number per pair: the first number of the answer (`generate`)
or the expected answer over the tokens "0".."score_max" (`logits`), None for an answer without one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from coz_train.eval.judge.cache import MISS, JudgeCache, answer_settings
from coz_train.eval.judge.checks import SERVER, check_judge, judge_enabled
from coz_train.eval.judge.pairs import JudgePair, as_scores, judge_pairs
from coz_train.rewards.batches import in_batches
from coz_train.rewards.critic import CriticScoringError, load_critic_backend, with_instruction
from coz_train.sr.chain import Chain

log = logging.getLogger(__name__)

T = TypeVar("T")
CACHE_FOLDER = "judge_cache"  # under the run folder, unless eval.judge.cache_dir is set
HINT = (
    "check that eval.judge.max_new_tokens leaves room for the answer, that eval.judge.instruction asks for an "
    "integer 0..eval.judge.score_max, and that the judge loaded correctly (eval.judge.name_or_path, "
    "eval.judge.dtype; a model with broken weights writes empty answers)"
)


def as_judge_keys(text: str) -> str:
    """A critic backend's message with its `critic.<key>` names as the `eval.judge.<key>` they came from."""
    return re.sub(r"(?<![\w.])critic\.(?=[a-z_]+)", "eval.judge.", text)


def renamed(call: Callable[[], T]) -> T:
    """`call()`, its errors (ValueError and the critic's) re-raised as the same type naming `eval.judge` keys."""
    try:
        return call()
    except (ValueError, RuntimeError) as err:
        text = as_judge_keys(str(err))
        if text == str(err):
            raise
        try:
            again = type(err)(text)
        except TypeError:  # an error type that takes other arguments: as it was
            raise err from None
        raise again from err


class HallucinationJudge:
    """`judge(pairs)` -> hallucination in [0, 1] per pair (None: unparsable), the cache first, the rest in batches.

    `calls` counts the batches handed to the model, `asked` the pairs in them, `cached` the pairs answered from
    the cache, `unparsable` the answers without a number in range.
    """

    def __init__(self, section: DictConfig, backend: Any, cache: JudgeCache):
        self.section, self.backend, self.cache = section, backend, cache
        self.score_max = section.score_max
        self.calls = self.asked = self.cached = self.unparsable = 0

    def judge(self, pairs: list[JudgePair]) -> list[float | None]:
        keys = [self.cache.key(p.wider, p.zoomed) for p in pairs]
        found = [self.cache.get(key) for key in keys]
        todo = [i for i, value in enumerate(found) if value is MISS]
        self.cached += len(pairs) - len(todo)

        def run(start: int, stop: int) -> list[float | None]:
            batch = todo[start:stop]
            scores = self._ask([pairs[i] for i in batch])
            for i, score in zip(batch, scores, strict=True):  # a batch at a time: a stopped run keeps what it asked
                self.cache.put(keys[i], score)
            return scores

        for i, score in zip(
            todo, in_batches(run, len(todo), self.section.batch_size, "Judge", "eval.judge.batch_size"), strict=True
        ):
            found[i] = score
        return [None if value is None else value / self.score_max for value in found]

    def _ask(self, pairs: list[JudgePair]) -> list[float | None]:
        """One batch through the backend; NaN or no answer at all is an error (`CriticScoringError`), never a 0."""
        self.calls += 1
        self.asked += len(pairs)
        scores = renamed(lambda: self.backend.score([[p.wider, p.zoomed] for p in pairs], [""] * len(pairs)))
        bad = sum(1 for s in scores if s is not None and not math.isfinite(s))
        if bad:
            raise CriticScoringError(
                f"Judge {self.section.name_or_path}: {bad} of {len(scores)} answers are NaN or infinite; {HINT}."
            )
        if scores and all(s is None for s in scores):
            raise CriticScoringError(
                f"Judge {self.section.name_or_path} gave no usable answer for any of the "
                f"{len(scores)} pairs of a batch (every answer unparsable or empty): {HINT}."
            )
        missing = sum(s is None for s in scores)
        self.unparsable += missing
        if missing:
            log.warning(
                "Judge: %d of %d answers unparsable (left out of the hallucination means and their n)",
                missing,
                len(scores),
            )
        return scores

    def score_chains(self, chains: list[Chain], scales: list[int]) -> list[tuple[str, int, str, float]]:
        """(method, scale, "hallucination", value) of one image's chains (`pairs.judge_pairs`)."""
        pairs = judge_pairs(chains, scales)
        return as_scores(pairs, self.judge(pairs))

    def summary(self) -> str:
        return (
            f"judge {self.section.name_or_path}: {self.asked + self.cached} pairs, {self.cached} from the cache "
            f"({self.cache.folder}), {self.asked} asked in {self.calls} batches, {self.unparsable} unparsable"
        )


def backend_section(section: DictConfig) -> DictConfig:
    """`eval.judge` as the critic section a critic backend reads, the device resolved for this rank."""
    from coz_train.devices import rank_device

    critic = OmegaConf.create(OmegaConf.to_container(section, resolve=True))
    if section.backend != SERVER:
        critic.device = str(rank_device(section.device))
    return critic


def load_judge(section: DictConfig, run_dir: Path, backend: Any = None) -> HallucinationJudge | None:
    """The judge of `eval.judge` (None when it is off), its cache under eval.judge.cache_dir or `<run_dir>/judge_cache`;
    `backend`: a critic backend already in memory instead of loading one."""
    if not judge_enabled(section):
        return None
    check_judge(section)
    if backend is None:
        backend = renamed(lambda: load_critic_backend(OmegaConf.create({"critic": backend_section(section)})))
    else:  # the backend's own cfg words the question: this section's, on the same weights
        differ = [key for key in ("scoring", "score_max") if backend.cfg.get(key) != section[key]]
        if differ:
            raise ValueError(f"The judge backend in memory scores with other {differ} than eval.judge.")
        backend = with_instruction(backend, section.instruction)
    folder = Path(section.cache_dir).expanduser() if section.cache_dir else Path(run_dir) / CACHE_FOLDER
    log.info(
        "Judge %s (%s backend, %s scoring), answers cached in %s",
        section.name_or_path,
        section.backend,
        section.scoring,
        folder,
    )
    return HallucinationJudge(section, backend, JudgeCache(folder, answer_settings(section)))


def judged(
    judge: HallucinationJudge | None, chains: list[Chain], scales: list[int]
) -> list[tuple[str, int, str, float]]:
    """The judge's scores of one image's chains; none when there is no judge."""
    return [] if judge is None else judge.score_chains(chains, scales)
