"""The newest release of each library: from PyPI's JSON API, or given by hand (`--versions name==version`).

The newest release is the highest final version with at least one file that is not yanked; pre-releases and
development releases are left out (the default install never picks them).
"""

from __future__ import annotations

from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

PYPI = "https://pypi.org/pypi"  # {PYPI}/<name>/json


def newest_in(project: dict[str, Any]) -> str:
    """The newest final, not wholly yanked release in a PyPI JSON API answer (`GET /pypi/<name>/json`)."""
    candidates = []
    for text, files in (project.get("releases") or {}).items():
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        if version.is_prerelease or version.is_devrelease or not files:
            continue
        if all(file.get("yanked") for file in files):
            continue
        candidates.append(version)
    if not candidates:
        name = (project.get("info") or {}).get("name", "the project")
        raise ValueError(f"PyPI lists no final release of {name} with files that are not yanked.")
    return str(max(candidates))


def fetch_newest(name: str, index: str = PYPI, timeout: float = 30.0) -> str:
    """The newest release of `name` on the index's JSON API."""
    import httpx

    url = f"{index.rstrip('/')}/{name}/json"
    try:
        answer = httpx.get(url, timeout=timeout, follow_redirects=True)
        answer.raise_for_status()
        project = answer.json()
    except (httpx.HTTPError, ValueError) as err:
        raise ValueError(f"could not read the newest {name} release from {url} ({err}); give it by hand with "
                         f"--versions {name}==<version>.") from err
    return newest_in(project)


def given_versions(specs: list[str], libraries: tuple[str, ...]) -> dict[str, str]:
    """`["transformers==5.26.0", ...]` -> {"transformers": "5.26.0"}, for the libraries the check covers only."""
    known = {canonicalize_name(name): name for name in libraries}
    given: dict[str, str] = {}
    for spec in specs:
        name, sep, version = spec.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"--versions {spec!r}: write name==version, e.g. --versions transformers==5.26.0.")
        key = canonicalize_name(name.strip())
        if key not in known:
            raise ValueError(f"--versions {spec!r}: {name.strip()} is not one of the checked libraries "
                             f"({', '.join(libraries)}).")
        try:
            Version(version.strip())
        except InvalidVersion as err:
            raise ValueError(f"--versions {spec!r}: {version.strip()!r} is not a version number.") from err
        given[known[key]] = version.strip()
    return given


def newest_releases(libraries: tuple[str, ...], given: dict[str, str], index: str = PYPI) -> dict[str, tuple[str, str]]:
    """{library: (version, where from)}: the versions given by hand, the others from the index."""
    return {name: (given[name], "given") if name in given else (fetch_newest(name, index), "PyPI")
            for name in libraries}
