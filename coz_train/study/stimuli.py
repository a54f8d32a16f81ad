"""What a study can show: items, the conditions of each test, one stimulus per rating, hidden controls, anchors.

An item is (eval image, zoom scale), named `<image>@<scale>x`. A stimulus is what one rating is about:
- image test: the condition's state at that scale (`<k>.png`), with the low-resolution input region beside
  it (`study.image_reference=crop`), the whole input with the region outlined (`input`) or nothing (`none`);
- text test: the condition's prompt for that step shown with the two images it was written from: the
  previous state and its crop that was zoomed into, bicubic-upscaled (the "zoomed" image; for `onestep-*` the
  input and the input's crop at that zoom, what the one-step prompt source sees). Conditions without any prompt
  (`nearest`, `*-null`) are not in the text test.
Every region is the one the eval run zoomed into (`ChainFiles.windows`: the centre, or around the run's
eval.zoom_centre / eval.zoom_centres); conditions of one image that zoomed into different regions (runs with
other zoom centres) are refused, as their ratings would compare different content.
mos mode: one stimulus per (item, condition); pair mode: one per (item, unordered pair of conditions).
Controls (hidden screening, `check="control"`): the image test's is `study.checks.control_condition`
(`nearest`) at the largest zoom, the text test's a prompt written for another item. Their condition is
named `control:<what>` so that no analysis can mix them into a real condition's mean; in a pair control
the side named `control:` is the degraded one.
"""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass, field

from omegaconf import DictConfig
from PIL import Image

from coz_train.study.media import MediaWriter, low_resolution_region, outlined_input, region_in_state, zoomed_view
from coz_train.study.ratings import TESTS
from coz_train.study.runs import ChainFiles, RunSet

log = logging.getLogger(__name__)
MODES = ("mos", "pair")
REFERENCES = ("none", "crop", "input")
CONTROL_PREFIX = "control:"
MISMATCHED_TEXT = CONTROL_PREFIX + "mismatched-text"


@dataclass(frozen=True)
class Panel:
    images: tuple[str, ...]  # media ids
    text: str = ""

    def to_json(self) -> dict:
        return {"images": list(self.images), "text": self.text}


@dataclass(frozen=True)
class Stimulus:
    test: str
    kind: str
    item: str
    scale: int
    conditions: tuple[str, ...]  # mos: one; pair: (left, right) before a rater's placement
    panels: tuple[Panel, ...]  # one per condition
    reference: str | None = None  # media id shown beside (image test)
    check: str = ""  # "" | "control"


@dataclass
class StimulusSet:
    conditions: list[str]
    test_conditions: dict[str, list[str]]
    items: list[dict]  # {"id", "image", "scale"}
    ordinary: dict[str, list[Stimulus]] = field(default_factory=dict)  # test -> stimuli
    controls: dict[str, list[Stimulus]] = field(default_factory=dict)  # test -> a pool, one per item
    anchors: dict[str, list[dict]] = field(default_factory=dict)  # test -> [{"images", "text", "caption"}]


def item_id(image: str, scale: int) -> str:
    return f"{image}@{scale}x"


def _pick(given: list | None, available: list, key: str) -> list:
    if given is None:
        return list(available)
    unknown = [v for v in given if v not in available]
    if unknown:
        raise ValueError(f"{key}: {unknown} not in the eval runs, which hold {available}.")
    if not given:
        raise ValueError(f"{key} is empty: name at least one (the runs hold {available}).")
    return list(dict.fromkeys(given))


class _Images:
    """Media ids of the images a stimulus needs, made once each."""

    def __init__(self, runs: RunSet, media: MediaWriter):
        self.runs, self.media = runs, media
        self._opened: dict[str, Image.Image] = {}

    def open(self, chain: ChainFiles, k: int) -> Image.Image:
        path = chain.state(k)
        if str(path) not in self._opened:
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing from its eval run: rerun the evaluation or drop that run.")
            with Image.open(path) as image:
                self._opened[str(path)] = image.convert("RGB")
        return self._opened[str(path)]

    def state(self, chain: ChainFiles, k: int) -> str:
        return self.media.add_file(chain.state(k), f"{chain.folder}/{k}.png")

    def reference(self, chain: ChainFiles, scale: int, how: str) -> str | None:
        """The input's region that the state at `scale` shows: enlarged (`crop`) or outlined in the input."""
        if how == "none":
            return None
        start, window = self.open(chain, 0), chain.window(self.runs.scales.index(scale) + 1)
        made = low_resolution_region(start, window) if how == "crop" else outlined_input(start, window)
        return self.media.add_image(made, f"{how} reference of {chain.folder}/0.png at {scale}x, {list(window)}")

    def prompt_inputs(self, chain: ChainFiles, k: int) -> tuple[str, str]:
        """[previous, zoomed] as the prompt source saw them at step k: the input and its window W_k (`onestep`),
        else state k-1 and its crop showing W_k."""
        if chain.method == "onestep":
            previous_id, previous, box = self.state(chain, 0), self.open(chain, 0), chain.window(k)
        else:
            previous_id, previous = self.state(chain, k - 1), self.open(chain, k - 1)
            shown = chain.window(k - 1) if k > 1 else (0, 0, previous.width, previous.height)
            box = region_in_state(chain.window(k), shown, previous.width)
        zoomed = self.media.add_image(zoomed_view(previous, box), f"zoomed view of {chain.folder} at step {k}")
        return previous_id, zoomed


def check_same_regions(chains: list[ChainFiles]) -> None:
    """The conditions of one image show the same regions of it, zoom by zoom (as far as each chain goes)."""
    first = chains[0]
    for other in chains[1:]:
        steps = min(len(first.windows), len(other.windows))
        if first.windows[:steps] != other.windows[:steps]:
            k = next(k for k in range(steps) if first.windows[k] != other.windows[k]) + 1
            raise ValueError(
                f"Image {first.image!r}: {first.label} of {first.run} shows the region {first.windows[k - 1]} at step "
                f"{k} but {other.label} of {other.run} shows {other.windows[k - 1]} (the runs zoomed around other "
                "points: eval.zoom_centre / eval.zoom_centres): a study compares the same region; build it from "
                "runs with the same zoom centres, or pick conditions of one run (study.conditions).")


def build_stimuli(runs: RunSet, study: DictConfig, media: MediaWriter) -> StimulusSet:
    tests = list(dict.fromkeys(study.tests))
    bad = [t for t in tests if t not in TESTS]
    if bad or not tests:
        raise ValueError(f"study.tests={list(study.tests)}: each must be one of {TESTS} (at least one).")
    if study.mode not in MODES:
        raise ValueError(f"study.mode={study.mode!r} must be one of {MODES}.")
    if study.image_reference not in REFERENCES:
        raise ValueError(f"study.image_reference={study.image_reference!r} must be one of {REFERENCES}.")
    conditions = _pick(None if study.conditions is None else list(study.conditions), runs.conditions,
                       "study.conditions")
    common = sorted(set.intersection(*(set(runs.images(c)) for c in conditions)))
    if not common:
        raise ValueError(f"No eval image has all of {conditions}: pick conditions of the same images.")
    images = _pick(None if study.images is None else list(study.images), common, "study.images")
    for image in images:
        check_same_regions([runs.chains[c, image] for c in conditions])
    scales = _pick(None if study.scales is None else [int(s) for s in study.scales], runs.scales, "study.scales")
    items = [{"id": item_id(image, s), "image": image, "scale": s} for image in images for s in scales]
    step = {s: k for k, s in enumerate(runs.scales, start=1)}
    pics = _Images(runs, media)

    test_conditions = {"image": conditions} if "image" in tests else {}
    if "text" in tests:
        with_text = [c for c in conditions if any(runs.chains[c, i["image"]].prompts.get(step[i["scale"]])
                                                  for i in items)]
        left_out = [c for c in conditions if c not in with_text]
        if left_out:
            log.info("Text test: %s have no prompts and are left out of it", left_out)
        need = 2 if study.mode == "pair" else 1
        if len(with_text) < need:
            raise ValueError(f"study.tests has text but only {with_text or 'no condition'} of {conditions} "
                             f"have prompts ({need} needed in {study.mode} mode): add VLM conditions to "
                             "study.conditions or set study.tests=[image].")
        test_conditions["text"] = with_text
    out = StimulusSet(conditions, test_conditions, items)

    def panel(test: str, condition: str, item: dict) -> Panel | None:
        chain, k = runs.chains[condition, item["image"]], step[item["scale"]]
        if test == "image":
            return Panel((pics.state(chain, k),))
        text = chain.prompts.get(k, "")
        return Panel(pics.prompt_inputs(chain, k), text) if text else None

    for test, conds in test_conditions.items():
        stimuli = []
        for item in items:
            chain = runs.chains[conds[0], item["image"]]
            reference = pics.reference(chain, item["scale"], study.image_reference) if test == "image" else None
            panels = {c: panel(test, c, item) for c in conds}
            groups = [(c,) for c in conds] if study.mode == "mos" else list(itertools.combinations(conds, 2))
            for group in groups:
                if any(panels[c] is None for c in group):
                    continue  # a chain without a prompt at this step: nothing to rate
                stimuli.append(Stimulus(test, study.mode, item["id"], item["scale"], group,
                                        tuple(panels[c] for c in group), reference))
        out.ordinary[test] = stimuli
    if study.checks.controls > 0:
        out.controls = _controls(runs, study, out, pics, step, panel)
    out.anchors = _anchors(runs, study, out, pics, step)
    return out


def _controls(runs: RunSet, study: DictConfig, out: StimulusSet, pics: _Images, step: dict, panel) -> dict:
    rng = random.Random(f"controls:{study.seed}")
    controls: dict[str, list[Stimulus]] = {}
    images = list(dict.fromkeys(i["image"] for i in out.items))
    if "image" in out.test_conditions:
        name = study.checks.control_condition
        scale = study.checks.control_scale or max(runs.scales)
        if scale not in runs.scales:
            raise ValueError(f"study.checks.control_scale={scale} is not a scale of the runs {runs.scales}.")
        missing = [image for image in images if (name, image) not in runs.chains]
        if missing:
            raise ValueError(f"study.checks.control_condition={name!r} is not in the eval runs for {missing} "
                             f"(they hold {runs.conditions}): name one that is, e.g. nearest, or set "
                             "study.checks.controls=0.")
        pool = []
        for image in images:
            check_same_regions([runs.chains[out.test_conditions["image"][0], image], runs.chains[name, image]])
            item = {"id": item_id(image, scale), "image": image, "scale": scale}
            degraded = Panel((pics.state(runs.chains[name, image], step[scale]),))
            reference = pics.reference(runs.chains[name, image], scale, study.image_reference)
            if study.mode == "mos":
                pool.append(Stimulus("image", "mos", item["id"], scale, (CONTROL_PREFIX + name,), (degraded,),
                                     reference, "control"))
            else:
                other = rng.choice([c for c in out.test_conditions["image"] if c != name])
                pool.append(Stimulus("image", "pair", item["id"], scale, (other, CONTROL_PREFIX + name),
                                     (panel("image", other, item), degraded), reference, "control"))
        controls["image"] = pool
    if "text" in out.test_conditions:
        pool = []
        for item in out.items:
            for condition in out.test_conditions["text"]:
                genuine = panel("text", condition, item)
                if genuine is None:
                    continue
                others = [o for o in out.items if o["image"] != item["image"]] or [
                    o for o in out.items if o["id"] != item["id"]]
                texts = [t for o in others if (t := runs.chains[condition, o["image"]].prompts.get(step[o["scale"]]))
                         and t != genuine.text]
                if not texts:
                    continue
                wrong = Panel(genuine.images, rng.choice(texts))
                if study.mode == "mos":
                    pool.append(Stimulus("text", "mos", item["id"], item["scale"], (MISMATCHED_TEXT,), (wrong,),
                                         None, "control"))
                else:
                    pool.append(Stimulus("text", "pair", item["id"], item["scale"], (condition, MISMATCHED_TEXT),
                                         (genuine, wrong), None, "control"))
                break  # one control per item
        if not pool:
            raise ValueError("No text control can be made (every prompt is the same, or there is one item): "
                             "set study.checks.controls=0.")
        controls["text"] = pool
    return controls


def _anchors(runs: RunSet, study: DictConfig, out: StimulusSet, pics: _Images, step: dict) -> dict:
    first = out.items[0]
    anchors: dict[str, list[dict]] = {}
    if "image" in out.test_conditions:
        chain = runs.chains[out.test_conditions["image"][0], first["image"]]
        start = pics.open(chain, 0)
        low = pics.media.add_image(low_resolution_region(start, chain.window(runs.steps)), "low anchor")
        anchors["image"] = [{"images": [pics.state(chain, 0)], "text": "", "caption": study.texts.anchor_high},
                            {"images": [low], "text": "", "caption": study.texts.anchor_low}]
    if "text" in out.test_conditions and out.controls.get("text"):
        pool = out.controls["text"]
        control = pool.pop(0) if len(pool) > 1 else pool[0]  # the example is not also a hidden control
        wrong = control.panels[-1]
        anchors["text"] = [{"images": list(wrong.images), "text": wrong.text, "caption": study.texts.anchor_text_low}]
    return anchors
