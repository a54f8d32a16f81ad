"""The reference pages agree with the code: every schema key has a help text, and the generated configuration
page lists exactly the schema's keys; the help texts are read from the source as written."""

from __future__ import annotations

import dataclasses
import html
import importlib
import re
import textwrap

import pytest

from coz_train.docs_reference import pages
from coz_train.docs_reference.commands import argparse_help, commands
from coz_train.docs_reference.schema import sections
from coz_train.docs_reference.source_comments import class_help, yaml_comments


def schema_keys(schema: type, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys |= schema_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


@pytest.mark.parametrize("module, name", [("coz_train.config", "CozTrainConfig"), ("coz_train.study.config", "StudyConfig")])
def test_every_config_key_and_section_has_a_help_text(module, name):
    schema = getattr(importlib.import_module(module), name)
    found = sections(schema)
    assert {k.path for s in found for k in s.keys} == schema_keys(schema)
    missing = [k.path for s in found for k in s.keys if not k.help]
    assert not missing, f"fields without a trailing `# comment` in {module.replace('.', '/')}.py: {missing}"
    assert not [s.path for s in found if not s.doc], "sections without a docstring (or a comment on their field)"


def test_a_field_without_a_comment_is_reported_without_help(tmp_path, monkeypatch):
    source = tmp_path / "schema_module.py"
    source.write_text(
        textwrap.dedent('''
        from dataclasses import dataclass

        @dataclass
        class Section:
            """A section."""

            told: int = 1  # what told is
            untold: int = 2
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import schema_module

    (section,) = sections(schema_module.Section)
    assert {k.path: k.help for k in section.keys} == {"told": "what told is", "untold": ""}


def test_the_configuration_page_lists_exactly_the_schema_keys():
    """A row per key: every schema key is a row, and every dotted row is a schema key (rows without a dot are
    also the options and experiments)."""
    from coz_train.config import CozTrainConfig

    rows = {html.unescape(k) for k in re.findall(r"^\| <code>([^<]+)</code> \|", pages.configuration_page(), re.M)}
    keys = schema_keys(CozTrainConfig)
    assert {k for k in rows if "." in k} == {k for k in keys if "." in k}
    assert {k for k in keys if "." not in k} <= rows


def test_comments_as_help(tmp_path):
    source = textwrap.dedent('''
        from dataclasses import dataclass, field

        @dataclass
        class C:
            """Doc of C."""

            a: int = 1  # trailing
            # above b,
            # two lines
            b: int = 2
            c: str = (
                "x"
            )  # after a statement of several lines
            d: int = 3  # wrapped help
            # that goes on
            e: int = 4  # e's own
            # --- a separator
        # about f
            f: int = 5
            g: list = field(default_factory=list)  # type: ignore[misc]
            h: int = 6  # noqa: E501 - not help
    ''')
    file = tmp_path / "c.py"
    file.write_text(source)
    found = class_help(file)["C"]
    assert found.doc == "Doc of C."
    assert found.fields == {
        "a": "trailing",
        "b": "above b, two lines",
        "c": "after a statement of several lines",
        "d": "wrapped help that goes on",
        "e": "e's own",
        "f": "about f",
        "g": "",
        "h": "",
    }


def test_yaml_comments(tmp_path):
    file = tmp_path / "g.yaml"
    file.write_text(
        textwrap.dedent("""\
        # header
        a: 1            # about a
                        # continued
        b:
          c: 'x # not a comment'   # about c
          d: [1, 2]
        e: 2  # about e
    """)
    )
    assert yaml_comments(file) == {"a": "about a continued", "b.c": "about c", "e": "about e"}


def test_every_command_is_found_with_its_kind():
    found = {c.module: c.kind for c in commands()}
    assert found["coz_train"] == found["coz_train.eval"] == found["coz_train.critic_server"] == "hydra"
    assert found["coz_train.eval.merge"] == found["coz_train.compat"] == "argparse"  # compat: main imported
    assert found["coz_train.study"] == found["coz_train.tiny.internvl2_5"] == "script"  # never run for help
    assert argparse_help("coz_train.eval.merge").startswith("usage: merge.py")
