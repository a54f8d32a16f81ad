"""Building a metric without network: one short probe decides whether downloads are tried, and while
pyiqa builds a metric offline, downloads are refused at once instead of retried."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0  # one request to the weights host decides whether downloads are tried
SOCKET_TIMEOUT_S = 30.0  # bounds every connect/read of a download while metrics are built


def offline_reason() -> str | None:
    """None when the weights host answers; otherwise why downloads are not tried."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"offline mode ({var}={os.environ[var]})"
    try:
        from huggingface_hub.constants import ENDPOINT as endpoint
    except ImportError:
        endpoint = "https://huggingface.co"
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as error:
        log.debug("weights host %s unreachable: %s", endpoint, error)
        return f"no network: {endpoint} unreachable"
    return None


@contextlib.contextmanager
def _replaced(owner: object, name: str, value: object) -> Iterator[None]:
    """owner.name set to value for the block, the original put back afterwards."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def downloads(offline: bool) -> Iterator[None]:
    """While metrics are built: every socket operation times out after SOCKET_TIMEOUT_S, and offline,
    host lookups fail at once and the Hugging Face hub is in offline mode (cache only, no retries).
    Both are process-wide for these few seconds."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(SOCKET_TIMEOUT_S)
    try:
        with contextlib.ExitStack() as stack:
            if offline:

                def refuse(*args: object, **kwargs: object) -> None:
                    raise socket.gaierror(socket.EAI_NONAME, "downloads are off while offline")

                stack.enter_context(_replaced(socket, "getaddrinfo", refuse))
                with contextlib.suppress(ImportError):
                    import huggingface_hub.constants

                    stack.enter_context(_replaced(huggingface_hub.constants, "HF_HUB_OFFLINE", True))
            yield
    finally:
        socket.setdefaulttimeout(previous)


def is_download_error(error: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, TimeoutError)) or type(current).__name__ in (
            "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ReadTimeout",
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
