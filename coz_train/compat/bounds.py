"""The project's version bounds on the libraries whose internals it touches, and how to widen them.

A bound is a requirement line as `pyproject.toml` writes it (`"transformers>=5.24,<5.26"`); the installed
package's metadata (`importlib.metadata.requires("coz_train")`) stands in when there is no checkout. The
default install resolves only to tested minor versions, so widening a bound moves its upper end to just past
the minor version that was checked (`<5.26` -> `<5.27` for 5.26.0) and keeps everything else as written.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, Specifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

LIBRARIES = ("transformers", "trl", "peft", "accelerate")  # the libraries coz_train/perf and the trainer reach into
_NAME = re.compile(r"^\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?")


@dataclass(frozen=True)
class Bound:
    """One library's requirement line and where it was read."""

    library: str
    line: str | None  # "transformers>=5.24,<5.26"; None: the project does not name the library
    source: str  # "pyproject.toml" | "installed metadata"

    @property
    def specifier(self) -> SpecifierSet:
        return SpecifierSet() if self.line is None else Requirement(self.line).specifier

    def contains(self, version: str) -> bool:
        return self.specifier.contains(version, prereleases=True)


def pyproject_requirements(path: Path, extra: str | None = None) -> list[str]:
    """[project] dependencies of a pyproject.toml, followed by those of `extra` when given."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        project = tomllib.loads(path.read_text()).get("project", {})
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err}); fix the file or give another checkout with --checkout.") from err
    dependencies = project.get("dependencies")
    if not isinstance(dependencies, list):
        raise ValueError(f"{path}: no [project] dependencies list; the bounds are read from there.")
    if extra is None:
        return dependencies
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        raise ValueError(f"{path}: no [project.optional-dependencies] {extra} list; the checks install it.")
    return [*dependencies, *extras[extra]]


def with_versions(lines: list[str], versions: dict[str, str]) -> list[str]:
    """The requirement lines with each named library's line made `name==version` (extras and marker kept): the
    project's requirements as if its bounds admitted the versions checked."""
    wanted = {canonicalize_name(name): version for name, version in versions.items()}
    out = []
    for line in lines:
        req = Requirement(line)
        version = wanted.get(canonicalize_name(req.name))
        if version is None:
            out.append(line)
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        out.append(f"{req.name}{extras}=={version}" + (f"; {req.marker}" if req.marker else ""))
    return out


def installed_requirements(distribution: str = "coz_train") -> list[str]:
    """The requirement lines of the installed package (no extras' lines)."""
    try:
        lines = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise ValueError(f"no pyproject.toml given and {distribution} is not installed: run from a checkout "
                         "(--checkout PATH) or install the package.") from err
    return [line for line in lines if "extra ==" not in line]


def project_bounds(pyproject: Path | None, libraries: tuple[str, ...] = LIBRARIES) -> dict[str, Bound]:
    """{library: Bound} from the checkout's pyproject.toml, else from the installed package's metadata."""
    if pyproject is not None and pyproject.is_file():
        lines, source = pyproject_requirements(pyproject), "pyproject.toml"
    else:
        lines, source = installed_requirements(), "installed metadata"
    by_name: dict[str, str] = {}
    for line in lines:
        try:
            by_name[canonicalize_name(Requirement(line).name)] = line.strip()
        except InvalidRequirement as err:
            where = pyproject if source == "pyproject.toml" else "the installed coz_train metadata"
            raise ValueError(f"{where}: dependency {line!r} is not a valid requirement ({err}).") from err
    return {name: Bound(name, by_name.get(canonicalize_name(name)), source) for name in libraries}


def specifiers_in_order(line: str) -> list[Specifier]:
    """The specifiers of a requirement line in the order written (SpecifierSet sorts them)."""
    text = _NAME.sub("", line.split(";")[0], count=1).strip().strip("()")
    return [Specifier(part.strip()) for part in text.split(",") if part.strip()]


def next_minor(version: str) -> str:
    """"5.26.0" -> "5.27": the first version of the minor release after `version`'s."""
    major, minor_ = (*Version(version).release, 0)[:2]
    return f"{major}.{minor_ + 1}"


def widened(line: str, version: str) -> str:
    """The requirement line with its upper end moved just past `version`'s minor release, the rest as written.

    `"transformers>=5.24,<5.26"`, 5.26.0 -> `"transformers>=5.24,<5.27"`; `~=0.21.0` becomes `>=0.21.0,<0.23` for
    0.22.1. A line that already admits `version` comes back unchanged. A lower end above `version`, or a `!=`
    that excludes it, is not a widening: ValueError.
    """
    try:
        target = Version(version)
        specifiers = specifiers_in_order(line)
    except (InvalidVersion, InvalidSpecifier) as err:
        raise ValueError(f"cannot widen {line!r} to {version!r}: {err}") from err
    if SpecifierSet(",".join(map(str, specifiers))).contains(target, prereleases=True):
        return line
    upper = f"<{next_minor(version)}"
    kept: list[str] = []
    for spec in specifiers:
        if spec.contains(target, prereleases=True):
            kept.append(str(spec))
        elif spec.operator in ("<", "<="):
            kept.append(upper)
        elif spec.operator in ("~=", "==") and Version(spec.version.rstrip(".*")) <= target:
            kept += [f">={spec.version.rstrip('.*')}", upper]
        else:
            raise ValueError(f"{line!r} excludes {version} with {spec}, which is not an upper bound: edit it by hand.")
    joined = ",".join(dict.fromkeys(kept))  # one "<x.y" even where two specifiers gave it
    head = _NAME.match(line.split(";")[0])
    marker = f";{line.split(';', 1)[1]}" if ";" in line else ""
    new = f"{head.group(0).strip() if head else ''}{joined}{marker}"
    assert Requirement(new).specifier.contains(target, prereleases=True), (new, version)
    return new


def constraint_pins(text: str) -> dict[str, str]:
    """{canonical name: version} of the `name==version` lines of a constraints file."""
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name.strip())] = version.split(";")[0].strip()
    return pins


def pinned(text: str, versions: dict[str, str], unpin: tuple[str, ...] = ()) -> str:
    """The constraints file's text with `name==version` for each of `versions` (replacing its line, or added), and
    without the pins of `unpin` (packages a new release needs newer than pinned)."""
    wanted = {canonicalize_name(name): (name, version) for name, version in versions.items()}
    dropped = {canonicalize_name(name) for name in unpin}
    done: set[str] = set()
    out = []
    for raw in text.splitlines():
        line = raw.split("#")[0].strip()
        key = canonicalize_name(line.split("==", 1)[0].strip()) if "==" in line else None
        if key in dropped:
            continue
        if key in wanted:
            out.append(f"{raw.split('==', 1)[0].strip()}=={wanted[key][1]}")
            done.add(key)
        else:
            out.append(raw)
    out += [f"{name}=={version}" for key, (name, version) in wanted.items() if key not in done]
    return "\n".join(out) + "\n"
