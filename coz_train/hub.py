"""Resolving model names to something loadable, failing in seconds with what to do.

A model is a hub id, a local folder, `tiny:<arch>[@seed]` (built offline, see
`coz_train.tiny.models`) or `random:<hub id>[:<N>layers][@seed]` (the real architecture from a config that
ships in the package, random weights, built offline: `coz_train.tiny.random_models`). Before any weights load we check that the model's config can be had:
from a local folder, the local hub cache, or one quick request to the hub. Offline or with a
wrong path the run stops here with a message naming the config key, instead of failing after
minutes of data preparation or halfway through loading the other model.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from coz_train.tiny.names import RANDOM_PREFIX, TINY_PREFIX
from coz_train.tiny.published import CONFIGS as PUBLISHED_CONFIGS


class ModelNotAvailableError(RuntimeError):
    pass


def _explain(name: str, key: str, reason: str, local: bool = False) -> str:
    fetch = "check the path" if local else f"download it while online: hf download {name}"
    return (
        f"{key}='{name}' cannot be loaded: {reason}\n"
        f"  - {fetch}\n"
        f"  - or point {key} at a local copy: {key}=/path/to/model\n"
        f"  - or run the offline pipeline with tiny models: python -m coz_train +experiment=smoke"
        + (f"\n  - or the same architecture with random weights (speed, memory): {key}=random:{name}"
           if name in PUBLISHED_CONFIGS else "")
    )


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """One quick TCP connect to the hub (the hub client itself retries for ~30 s when offline)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(name: str, key: str, revision: str | None = None) -> str:
    """Return a local folder or hub id that `from_pretrained` can load (building a tiny or random model the first
    time it is asked for), or raise with advice."""
    if name.startswith(TINY_PREFIX):
        from coz_train.tiny.models import ensure_tiny_model

        return ensure_tiny_model(name)
    if name.startswith(RANDOM_PREFIX):
        from coz_train.tiny.random_models import ensure_random_model

        return ensure_random_model(name)
    return locate_model(name, key, revision)


def locate_model(name: str, key: str, revision: str | None = None) -> str:
    """`name` if its config can be had (a local folder, the hub cache, or one request to the hub), else
    `ModelNotAvailableError` with advice. Tiny and random models are built offline: they are always there.
    Imports no model library, so a run can check every model it needs before torch loads."""
    if name.startswith((TINY_PREFIX, RANDOM_PREFIX)):
        return name
    path = Path(name).expanduser()
    if path.exists() or name.startswith(("/", "./", "../", "~")):
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(
                _explain(name, key, f"'{path}' has no config.json (not a model folder).", local=True)
            )
        return str(path)

    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except HFValidationError as err:
        raise ModelNotAvailableError(_explain(name, key, f"not a local folder and not a valid hub id ({err}).")) from None
    if isinstance(cached, str):
        return name
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelNotAvailableError(_explain(name, key, "it is not in the local hub cache and HF_HUB_OFFLINE is set."))
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not _reachable(endpoint):
        raise ModelNotAvailableError(_explain(name, key, f"it is not in the local hub cache and {endpoint} cannot be reached."))
    try:
        hf_hub_download(name, "config.json", revision=revision, etag_timeout=10)
    except Exception as err:  # noqa: BLE001 - any failure here means the model cannot be had
        reason = f"the hub could not provide it ({type(err).__name__}: {str(err).splitlines()[0][:200]})."
        raise ModelNotAvailableError(_explain(name, key, reason)) from None
    return name
