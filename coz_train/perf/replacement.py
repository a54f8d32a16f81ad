"""Attribute replacements that remember what they replaced, so that they can be put back exactly.

Every run-time change the `perf` switches make to a model, a processor or a TRL module is one `Replacement`:
`apply()` sets the new value on the owner and `undo()` restores the old one — the same object when the owner
had its own attribute, or removes the instance attribute so that the class's method shows through again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_ABSENT = object()


def describe(value: Any) -> str:
    """Where the new value is defined: the function's own code for a (wrapped) method, else its class."""
    function = getattr(value, "__func__", value)
    code = getattr(function, "__code__", None)
    if code is not None:
        return f"{function.__globals__.get('__name__', '?')}.{code.co_qualname}"
    kind = value if isinstance(value, type) else type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


@dataclass
class Replacement:
    owner: Any
    name: str
    value: Any = None
    reason: str = ""
    previous: Any = field(default=_ABSENT, repr=False)
    applied: bool = False

    @classmethod
    def observed(cls, owner: Any, name: str, reason: str, before: Any) -> Replacement:
        """The record of a change someone else made: `before` is what `owner.__dict__[name]` held (or `_ABSENT`)."""
        return cls(owner, name, owner.__dict__.get(name, _ABSENT), reason, before, True)

    @staticmethod
    def own_value(owner: Any, name: str) -> Any:
        return owner.__dict__.get(name, _ABSENT)

    def apply(self) -> Replacement:
        if self.applied:
            raise RuntimeError(f"{self}: already applied")
        self.previous = self.own_value(self.owner, self.name)
        setattr(self.owner, self.name, self.value)
        self.applied = True
        return self

    def undo(self) -> None:
        if not self.applied:
            return
        if self.previous is _ABSENT:
            if self.name in self.owner.__dict__:
                delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.previous)
        self.applied = False

    @property
    def target(self) -> str:
        owner = self.owner if isinstance(self.owner, type) or hasattr(self.owner, "__file__") else type(self.owner)
        return f"{getattr(owner, '__name__', describe(owner))}.{self.name}"

    def __str__(self) -> str:
        return f"{self.target} -> {describe(self.value)}" + (f" ({self.reason})" if self.reason else "")


def recorded(changes: list[Replacement], owner: Any, name: str, reason: str, install: Callable[[], Any]) -> Any:
    """`install()`, which may set `owner.name` itself; what it replaced appended to `changes`; its result."""
    before = Replacement.own_value(owner, name)
    result = install()
    if Replacement.own_value(owner, name) is not before:
        changes.append(Replacement.observed(owner, name, reason, before))
    return result

