"""The mkdocs hook of the documentation site (mkdocs.yml: `hooks:`): the reference pages, written from the code.

`on_files` adds every page of `coz_train.docs_reference.pages.PAGES` to the site as a generated file (nothing
is written into docs/); `on_page_markdown` warns about each config key a hand-written page names that no
schema has, so `mkdocs build --strict` stops on it.
"""

from __future__ import annotations

import logging

from mkdocs.structure.files import File, Files

from coz_train.docs_reference.doc_keys import unknown_keys
from coz_train.docs_reference.pages import PAGES

log = logging.getLogger("mkdocs.hooks.coz_train")


def on_files(files: Files, config) -> Files:
    for path, write in PAGES.items():
        files.append(File.generated(config, path, content=write()))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri in PAGES:
        return markdown
    for unknown in unknown_keys(markdown):
        closest = f"; the closest: {', '.join(unknown.closest)}" if unknown.closest else ""
        log.warning(
            "%s:%d: `%s` is not a config key (coz_train/config.py, coz_train/eval_sections.py, coz_train/study/config.py, the reward registry)%s",
            page.file.src_uri,
            unknown.line,
            unknown.key,
            closest,
        )
    return markdown
