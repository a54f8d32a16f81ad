"""The package's layers run one way: a lower layer never imports a higher one.

What two layers share lives below both: the SR backbones, the zoom chain and the prompt sources in
`coz_train.sr`, the image-quality metrics in `coz_train.image_quality`, the statistics of the human study
and the eval comparison in `coz_train.stats`, the InternVL conversion in `coz_train.rewards.critic.conversion`
(the command `coz_train.critic_convert` sits beside the rewards).
Every import statement counts, those inside functions too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import coz_train

PACKAGE = Path(coz_train.__file__).parent


@dataclass(frozen=True)
class Rule:
    folder: str  # under coz_train/
    forbidden: tuple[str, ...]  # module prefixes it may not import
    allowed: tuple[str, ...] = ()  # exceptions inside the forbidden ones
    why: str = ""


RULES = (
    Rule("data", ("coz_train.eval", "coz_train.critic_convert"),
         why="the training data sits below the evaluation and the critic_convert command"),
    Rule("rewards", ("coz_train.eval", "coz_train.critic_convert"),
         why="the rewards sit below the evaluation and the critic_convert command beside them"),
    Rule("perf", ("coz_train.eval", "coz_train.data", "coz_train.rewards"),
         why="the fast paths sit below the evaluation, the data and the rewards"),
    Rule("sr", ("coz_train.eval", "coz_train.rewards", "coz_train.critic_convert", "coz_train.data"),
         allowed=("coz_train.data.zoom", "coz_train.data.prompts"),
         why="the SR chain sits below the data, the rewards and the evaluation (the zoom geometry and the VLM's "
             "message excepted: they import nothing of the package)"),
    Rule("image_quality", ("coz_train.eval", "coz_train.rewards", "coz_train.critic_convert", "coz_train.data",
                           "coz_train.sr"), why="the image-quality metrics sit below the rewards and the evaluation"),
    Rule("stats", ("coz_train",), allowed=("coz_train.stats",),
         why="the statistics sit below the human study and the evaluation that share them: they import nothing else"),
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path) -> list[tuple[int, list[str]]]:
    """(line, names) for every import statement: `import a, b` gives one entry per module; `from a import b, c`
    one entry [a, a.b, a.c] (a is what it imports, unless a is a package and b, c its modules)."""
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out: list[tuple[int, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, `level - 1` packages up
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
            out.append((node.lineno, [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]))
    return out


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(root: Path = PACKAGE, rules: tuple[Rule, ...] = RULES) -> list[str]:
    """One line per import that breaks a rule: the file, the line, the module it imports, the rule."""
    found = []
    for rule in rules:
        for path in sorted((root / rule.folder).rglob("*.py")):
            for line, names in sorted(imported(path, root)):
                bad = [name for name in names if within(name, rule.forbidden) and not within(name, rule.allowed)]
                if bad:
                    found.append(f"{path.relative_to(root.parent)}:{line} imports {bad[0]} ({rule.why})")
    return found


def test_lower_layers_import_no_higher_one():
    assert violations() == [], "\n".join(["Layer rule broken:", *violations()])


def test_every_ruled_folder_exists_and_has_modules():
    for rule in RULES:
        assert list((PACKAGE / rule.folder).rglob("*.py")), f"coz_train/{rule.folder} has no modules: update RULES"


def test_the_check_names_the_file_and_the_import(tmp_path):
    root = tmp_path / "coz_train"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "ok.py").write_text("from coz_train.sr.chain import recursive_chains\n")
    (root / "data" / "sub" / "bad.py").write_text(
        "import os\n\n\ndef f():\n    from coz_train.eval.chain import Chain\n    from coz_train import eval\n")
    (root / "data" / "sub" / "relative.py").write_text("from ...critic_convert import build\n")
    rule = Rule("data", ("coz_train.eval", "coz_train.critic_convert"), why="data below eval")
    assert violations(root, (rule,)) == [
        "coz_train/data/sub/bad.py:5 imports coz_train.eval.chain (data below eval)",
        "coz_train/data/sub/bad.py:6 imports coz_train.eval (data below eval)",
        "coz_train/data/sub/relative.py:1 imports coz_train.critic_convert (data below eval)",
    ]
