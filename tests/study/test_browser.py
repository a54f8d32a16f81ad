"""Raters in a real headless Chromium: keyboard and buttons, closing the browser half-way, going back.

Debian's chromium through Playwright (`chromium` fixture; COZ_TRAIN_CHROMIUM, set by .ci/run, turns a
missing browser into a failure). Each simulated rater decides its answer per task from a hash, records
what it gave, and the database must then hold exactly those answers. With COZ_TRAIN_STUDY_SCREENSHOT set,
the rating page is saved there (docs/figures/study_rating_page.png, shown in docs/study.md, is made so).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import zlib
from pathlib import Path

import pytest
from study_helpers import invitations, manifest

pytestmark = [pytest.mark.slow, pytest.mark.browser]
SCREEN = "#intro:not([hidden]), #task:not([hidden]), #done:not([hidden])"
PAIR_KEYS = {"left": "ArrowLeft", "right": "ArrowRight", "unsure": "ArrowDown"}


def intended(rater: str, task: str, kind: str, salt: int = 0) -> int | str:
    h = zlib.crc32(f"{rater}/{task}/{salt}".encode())
    return 1 + h % 5 if kind == "mos" else ("left", "right", "unsure")[h % 3]


class Rater:
    """One rater's browser window on the study."""

    def __init__(self, browser, url: str, name: str, kinds: dict[str, str], context=None):
        self.browser, self.url, self.name, self.kinds = browser, url, name, kinds
        self.given: dict[str, int | str] = {}
        self.open(context)

    def open(self, context=None) -> None:
        """A new browser window (its own context), or a new tab of `context`."""
        self.context = context or self.browser.new_context(viewport={"width": 1280, "height": 860})
        self.page = self.context.new_page()
        self.page.goto(self.url)
        self.page.locator("body[data-ready='1']").wait_for(timeout=20_000)
        if self.page.locator("#task").is_visible():
            self.page.locator("#task[data-armed='1']").wait_for(timeout=20_000)

    def close(self) -> None:
        self.context.close()

    def screen(self) -> str:
        self.page.locator(SCREEN).first.wait_for(timeout=20_000)
        for name in ("intro", "task", "done"):
            if self.page.locator(f"#{name}").is_visible():
                return name
        raise AssertionError("no screen is showing")

    def task(self) -> str:
        return self.page.get_attribute("#task", "data-task")

    def _after(self, before: str) -> None:
        self.page.locator(f"#task:not([hidden]):not([data-task='{before}']), #intro:not([hidden]), "
                          "#done:not([hidden])").first.wait_for(timeout=20_000)
        if self.page.locator("#task").is_visible():  # a new task takes input after a short pause
            self.page.locator("#task[data-armed='1']").wait_for(timeout=20_000)

    def start(self, keys: bool) -> None:
        if keys:
            self.page.keyboard.press("Enter")
        else:
            self.page.click("#start")
        self.page.locator("#task[data-armed='1']:not([hidden])").wait_for(timeout=20_000)

    def answer(self, keys: bool, value: int | str | None = None) -> None:
        task = self.task()
        value = intended(self.name, task, self.kinds[task]) if value is None else value
        if keys:
            self.page.keyboard.press(str(value) if isinstance(value, int) else PAIR_KEYS[value])
        else:
            attr = "data-score" if isinstance(value, int) else "data-choice"
            self.page.click(f"#choices button[{attr}='{value}']")
        self._after(task)
        self.given[task] = value

    def back(self, keys: bool) -> None:
        before = self.task() if self.screen() == "task" else ""
        if keys:
            self.page.keyboard.press("Backspace")
        else:
            self.page.click("#done-back" if self.screen() == "done" else "#back")
        self._after(before)

    def run(self, keys, answers: int | None = None) -> None:
        """Answer until done (or `answers` more answers); `keys(n)` says whether answer n uses the keyboard."""
        n = 0
        while answers is None or n < answers:
            screen = self.screen()
            if screen == "done":
                return
            if screen == "intro":
                self.start(keys(n))
                continue
            self.answer(keys(n))
            n += 1


def stored(study: Path) -> dict[tuple[str, str], int | str]:
    db = sqlite3.connect(study / "study.sqlite")
    rows = db.execute("SELECT rater, task, score, choice FROM answers").fetchall()
    db.close()
    return {(r, t): s if s is not None else c for r, t, s, c in rows}


def kinds_of(study: Path, rater: str) -> dict[str, str]:
    return {t["task"]: t["kind"] for t in manifest(study)["raters"][rater]}


def test_three_raters_complete_a_study_with_keys_and_buttons_resume_and_go_back(chromium, make_study,
                                                                               live_server, tmp_path):
    study = make_study("study.scales=[4,16]")  # 4 items: 12 image + 8 text tasks, 2 repeats, 2 controls
    server = live_server(study)
    tokens = invitations(study)
    order = {r: [t["task"] for t in manifest(study)["raters"][r]] for r in tokens}
    total = len(order["r01"])
    assert total == 24

    # r01: the keyboard only; the page is photographed on its first image task
    r01 = Rater(chromium, f"{server.url}/r/{tokens['r01']}", "r01", kinds_of(study, "r01"))
    assert r01.screen() == "intro" and r01.page.locator("#anchors img").count() >= 1
    photographed = False
    while r01.screen() != "done":
        if r01.screen() == "intro":
            r01.start(keys=True)
            continue
        if not photographed and r01.page.locator(".reference img").count():
            r01.page.locator(".stage img.result").evaluate_all("imgs => Promise.all(imgs.map(i => i.decode()))")
            shot = tmp_path / "study_rating_page.png"
            r01.page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("COZ_TRAIN_STUDY_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["COZ_TRAIN_STUDY_SCREENSHOT"])
            photographed = True
        r01.answer(keys=True)
    assert photographed and r01.page.text_content("#count") == f"{total} / {total}"
    r01.close()

    # r02: the buttons only; closes the browser after 10 answers and comes back with the same link
    r02 = Rater(chromium, f"{server.url}/r/{tokens['r02']}", "r02", kinds_of(study, "r02"))
    r02.run(keys=lambda n: False, answers=10)
    r02.close()
    assert {t for (r, t) in stored(study) if r == "r02"} == set(order["r02"][:10])
    again = Rater(chromium, f"{server.url}/r/{tokens['r02']}", "r02", kinds_of(study, "r02"))
    again.given = r02.given
    if again.screen() == "intro":  # the next task opens a new test block
        again.start(keys=False)
    assert again.task() == order["r02"][10] and again.page.text_content("#count") == f"10 / {total}"
    again.run(keys=lambda n: False)
    again.close()

    # r03: keys and buttons in turn; after 6 answers goes back twice and changes that answer
    r03 = Rater(chromium, f"{server.url}/r/{tokens['r03']}", "r03", kinds_of(study, "r03"))
    r03.run(keys=lambda n: n % 2 == 0, answers=6)
    r03.back(keys=False)
    r03.back(keys=True)
    changed = order["r03"][4]
    assert r03.task() == changed
    chosen = r03.page.locator("#choices button.chosen")
    assert chosen.count() == 1 and chosen.get_attribute("data-score") == str(r03.given[changed])
    new_value = 1 + r03.given[changed] % 5
    r03.answer(keys=False, value=new_value)  # stored at once; the page goes on to the first open task
    assert r03.task() == order["r03"][6] and stored(study)[("r03", changed)] == new_value
    r03.run(keys=lambda n: n % 3 == 0)
    assert r03.page.locator("#done").is_visible()
    r03.close()

    expected = {(name, task): value for name, rater in (("r01", r01), ("r02", again), ("r03", r03))
                for task, value in rater.given.items()}
    assert len(expected) == 3 * total and stored(study) == expected
    db = sqlite3.connect(study / "study.sqlite")
    assert db.execute("SELECT rater, task FROM answers WHERE changes > 0").fetchall() == [("r03", changed)]
    db.close()


def test_a_pair_study_with_arrow_keys_and_buttons(chromium, make_study, live_server):
    study = make_study("study.mode=pair", "study.scales=[16]", "study.raters=1")
    server = live_server(study)
    token = invitations(study)["r01"]
    rater = Rater(chromium, f"{server.url}/r/{token}", "r01", kinds_of(study, "r01"))
    assert rater.screen() == "intro"
    rater.start(keys=True)
    assert rater.page.locator(".stage .panel").count() == 2
    assert rater.page.locator("#choices button").count() == 3  # left, not sure, right
    rater.run(keys=lambda n: n % 2 == 1)
    assert stored(study) == {("r01", t): v for t, v in rater.given.items()}
    assert set(rater.given.values()) == {"left", "right", "unsure"}
    rater.close()


def test_two_tabs_and_a_double_click_answer_each_task_once(chromium, make_study, live_server):
    study = make_study("study.tests=[image]", "study.scales=[4]", "study.raters=1")
    server = live_server(study)
    url = f"{server.url}/r/{invitations(study)['r01']}"
    kinds = kinds_of(study, "r01")
    first = Rater(chromium, url, "r01", kinds)
    second = Rater(chromium, url, "r01", kinds, context=first.context)  # a second tab of the same window
    for tab in (first, second):
        tab.start(keys=True)
    assert first.task() == second.task() == "t0001"
    first.answer(keys=True, value=2)
    second.answer(keys=False, value=5)  # the stale tab answers the same task again: replaced, not added
    assert stored(study) == {("r01", "t0001"): 5} and first.task() == second.task() == "t0002"
    # a double click answers the task clicked, not also the one that replaces it
    second.page.dblclick("#choices button[data-score='3']")
    second.page.locator("#task[data-task='t0003'][data-armed='1']").wait_for(timeout=20_000)
    assert stored(study) == {("r01", "t0001"): 5, ("r01", "t0002"): 3}
    second.page.keyboard.down("4")  # a held key: one answer; its auto-repeats are ignored
    second.page.locator("#task[data-task='t0004'][data-armed='1']").wait_for(timeout=20_000)
    second.page.keyboard.down("4")  # a second keydown without a keyup: repeat=true
    second.page.wait_for_timeout(300)
    second.page.keyboard.up("4")
    assert stored(study)[("r01", "t0003")] == 4 and ("r01", "t0004") not in stored(study)
    db = sqlite3.connect(study / "study.sqlite")
    assert db.execute("SELECT task, changes FROM answers ORDER BY task").fetchall() == [
        ("t0001", 1), ("t0002", 0), ("t0003", 0)]
    db.close()
    first.close()  # the window, with both tabs
