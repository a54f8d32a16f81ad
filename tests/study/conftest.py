"""Study fixtures: one real smoke evaluation per session, studies built from it, a live server, Chromium.

The evaluation is `+experiment=smoke_eval` with the `recursive` method added (the paper's "Single"
condition: the base VLM sees only the zoomed crop) and only the VLM prompt source, PSNR as the one metric
and no figures: about half a minute on one CPU thread. `centred_eval_run`, for the tests of a chosen zoom
centre only, is a smaller one of one image zooming around ZOOM_CENTRE.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from study_helpers import LiveServer  # noqa: E402

from coz_train.study.build import build  # noqa: E402
from coz_train.study.config import load_config  # noqa: E402

SMOKE_EVAL = ["+experiment=smoke_eval", "eval.methods=[nearest,bicubic,onestep,recursive,recursive_multiscale]",
              "eval.prompt_sources=[vlm]", "eval.metrics=[psnr]", "eval.figures=false"]
CONDITIONS = ["onestep-null", "recursive-vlm", "recursive_multiscale-vlm"]  # image test; text: the two -vlm


@pytest.fixture(scope="session")
def eval_run(compose_cfg, tmp_path_factory) -> Path:
    """A real evaluation run folder (per-sample images, prompts.json, .hydra/config.yaml)."""
    from omegaconf import OmegaConf

    from coz_train.eval.run import evaluate

    out = tmp_path_factory.mktemp("smoke_eval")
    cfg = compose_cfg(SMOKE_EVAL, out)
    evaluate(cfg)
    (out / ".hydra").mkdir(exist_ok=True)  # written by @hydra.main in a real run; compose does not
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out


ZOOM_CENTRE = (0.25, 0.25)
CENTRED_EVAL = ["+experiment=smoke_eval", "eval.methods=[nearest,onestep,recursive_multiscale]",
                "eval.prompt_sources=[vlm]", "eval.onestep_prompt_sources=[vlm]", "eval.metrics=[psnr]",
                "eval.consistency_metrics=[]", "eval.figures=false", "eval.max_images=1",
                "eval.zoom_centre=[{},{}]".format(*ZOOM_CENTRE)]


@pytest.fixture(scope="session")
def centred_eval_run(compose_cfg, tmp_path_factory) -> Path:
    """A real evaluation run of astronaut whose chains zoom around ZOOM_CENTRE instead of the centre."""
    from omegaconf import OmegaConf

    from coz_train.eval.run import evaluate

    out = tmp_path_factory.mktemp("centred_eval")
    cfg = compose_cfg(CENTRED_EVAL, out)
    evaluate(cfg)
    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out


@pytest.fixture
def make_study(eval_run, tmp_path):
    """make_study("study.mode=pair", ...) -> a built study folder under tmp_path."""
    made = []

    def make(*overrides: str, name: str | None = None) -> Path:
        name = name or f"s{len(made)}"
        cfg = load_config([f"study.name={name}", f"study.dir={tmp_path / name}",
                           f"study.conditions=[{','.join(CONDITIONS)}]", *overrides])
        made.append(build([str(eval_run)], cfg))
        return made[-1]

    return make


@pytest.fixture
def live_server():
    """live_server(study, "server.base_url=/prefix") -> a running LiveServer (stopped after the test)."""
    servers: list[LiveServer] = []

    def start(study: Path, *overrides: str) -> LiveServer:
        servers.append(LiveServer(study, *overrides))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium through Playwright; no browser is downloaded. COZ_TRAIN_CHROMIUM (set by .ci/run)
    makes a missing browser or Playwright a failure instead of a skip."""
    configured = os.environ.get("COZ_TRAIN_CHROMIUM")
    path = configured or shutil.which("chromium") or "/usr/bin/chromium"
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if missing is None and not Path(path).is_file():
        missing = f"no Chromium at {path} (.ci/system-packages installs Debian's chromium)"
    if missing:
        if configured:
            pytest.fail(f"COZ_TRAIN_CHROMIUM={configured} is set but {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()
