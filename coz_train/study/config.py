"""The study's structured config (`conf/study.yaml`), checked at start-up like the training config.

Every subcommand of `python -m coz_train.study` composes `conf/study.yaml` with the `key=value` overrides
given after its positional arguments, so a misspelt key or a wrong type stops it before anything is
written, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig

from coz_train.conf_dir import config_dir

STUDY_CONFIG = "study"  # conf/study.yaml


@dataclass
class ChecksSection:
    """Hidden screening tasks (ITU-R BT.500-style observer screening), per rater and test."""

    repeats: int = 1  # ordinary tasks shown a second time, later in the order (left/right swapped in pair mode)
    min_gap: int = 3  # at least this many tasks between a task and its repeat (when the block is long enough)
    controls: int = 1  # clearly degraded stimuli: image test = control_condition at control_scale;
    # text test = a prompt written for another item (the mismatched text)
    control_condition: str = "nearest"  # a method label of the eval runs
    control_scale: int | None = None  # None: the largest scale of the study


@dataclass
class TextsSection:
    """What raters read. Plain text; the 1-5 labels are ITU-T P.910's (5 Excellent ... 1 Bad)."""

    title: str = MISSING  # the page title and heading of every rating page
    welcome: str = MISSING  # the first page a rater sees (what the study is, how long it takes)
    image_question: str = MISSING  # mos mode, image test: the question above each image
    text_question: str = MISSING  # mos mode, text test: the question above each image and its prompt
    pair_image_question: str = MISSING  # pair mode, image test: the question above the two images
    pair_text_question: str = MISSING  # pair mode, text test: the question above the two prompts
    image_instructions: str = MISSING  # shown once before the image test block
    text_instructions: str = MISSING  # shown once before the text test block
    pair_instructions: str = MISSING  # shown once before a pair-mode block
    anchor_high: str = MISSING  # caption of the high anchor (the input photograph itself)
    anchor_low: str = MISSING  # caption of the low anchor (the input's pixels at the largest zoom, as blocks)
    anchor_text_low: str = MISSING  # caption of the text anchor (a text written for another image)
    done: str = MISSING  # the last page, after the rater's final answer is stored


@dataclass
class StudySection:
    """`build`: what the study holds (tests, conditions, images, scales), who rates it and in which order."""

    name: str = MISSING  # the study's name; the folder is `dir`
    dir: str = MISSING  # where `build` writes the study folder
    tests: list[str] = field(default_factory=lambda: ["image", "text"])  # image | text
    mode: str = "mos"  # mos (1-5 absolute category rating) | pair (two conditions side by side)
    conditions: list[str] | None = None  # method labels of the eval runs; None: all of them (run order)
    images: list[str] | None = None  # eval image names; None: every image all conditions have
    scales: list[int] | None = None  # zoom factors; None: every scale of the runs
    prefix_conditions: bool = False  # name conditions <run folder>/<label> (the same label in several runs)
    raters: int = 3  # invitations made by build (more later with `invite`)
    items_per_rater: int | None = None  # None: every item; else a balanced seeded subset per rater
    shuffle_tests: bool = True  # the order of the test blocks is drawn per rater (else as `tests`)
    unsure: bool = True  # pair mode offers "not sure"
    image_reference: str = "crop"  # image test: none | crop (the low-resolution input region) | input (outlined)
    media: str = "copy"  # copy | link (hard links to the eval run's files; a copy across file systems)
    seed: int = 0  # order, placement, subsets, checks; invitation tokens are random regardless
    checks: ChecksSection = field(default_factory=ChecksSection)
    texts: TextsSection = field(default_factory=TextsSection)


@dataclass
class StudyServerSection:
    """`serve`: the rating web app (uvicorn)."""

    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8765  # the TCP port the app listens on
    base_url: str | None = None  # the public URL behind a reverse proxy, e.g. https://lab.example.org/coz-study
    max_body_bytes: int = 4096  # larger request bodies are refused (413); an answer is ~100 bytes
    access_log: bool = False  # uvicorn's access log prints URLs, and URLs hold rater tokens


@dataclass
class InviteSection:
    """`invite`: more raters for a built study."""

    raters: int = 1  # `invite`: new raters, each with a token and a task list


@dataclass
class AnalyzeSection:
    """`analyze`: MOS with intervals, paired tests, screening and agreement, written to `out`."""

    drop_flagged: bool = True  # raters flagged by screening are dropped from the MOS (both are reported)
    n_boot: int = 2000  # bootstrap resamples (over raters and items) for the 95% intervals
    seed: int = 0  # the bootstrap's random seed (the same seed gives the same intervals)
    out: str | None = None  # None: <study>/results


@dataclass
class StudyLoggingSection:
    """wandb for `analyze`, read as the training runs' `logging` section is (`coz_train.wandb_setup`)."""

    wandb: bool = False  # log the study's results (tables and figure) to wandb
    project: str = "coz_train"  # the wandb project
    run_name: str | None = None  # default: <experiment_name>-<study name>
    mode: str = "auto"  # auto (offline without credentials) | online | offline | disabled


@dataclass
class StudyConfig:
    """The human study (`python -m coz_train.study build|serve|invite|analyze`, `conf/study.yaml`)."""

    study: StudySection = field(default_factory=StudySection)
    server: StudyServerSection = field(default_factory=StudyServerSection)
    invite: InviteSection = field(default_factory=InviteSection)
    analyze: AnalyzeSection = field(default_factory=AnalyzeSection)
    logging: StudyLoggingSection = field(default_factory=StudyLoggingSection)
    experiment_name: str = "study"  # wandb run names: <experiment_name>-<study name>


def register_study_config() -> None:
    ConfigStore.instance().store(name="coz_study_schema", node=StudyConfig)


def load_config(overrides: list[str]) -> DictConfig:
    """conf/study.yaml with `key=value` overrides (Hydra's override grammar)."""
    register_study_config()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=STUDY_CONFIG, overrides=list(overrides))


def plain(cfg: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
