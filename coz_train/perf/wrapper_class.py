"""The caches' wrapper classes: `<Prefix><Class>`, a real subclass of the wrapped object's own class.

`perf.image_cache` and `perf.text_cache` put a cache in front of a processor part's `__call__`. The wrapper is an
instance of `<Prefix><type(part)>` (a subclass of both the cache's base class and the part's class, made once per
class), so `isinstance` answers truly and its name says what it is.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def wrapper_class(prefix: str, base: type, kind: type) -> type:
    """`<prefix><kind>`: `base` (the cache) in front of `kind` (the wrapped class), one per class."""
    name = f"{prefix}{kind.__name__}"
    return type(name, (base, kind), {"__slots__": (), "__module__": base.__module__, "__qualname__": name})


def unwrapped(obj: Any, base: type) -> Any:
    """The object a wrapper of `base` wraps, or `obj` itself when it is no wrapper."""
    return obj._wrapped if isinstance(obj, base) else obj
