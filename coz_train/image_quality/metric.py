"""The contract every metric keeps: `metric(image, reference=None) -> float` on RGB PIL images, and the
exception that says why a metric cannot be built here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Metric:
    """One quality metric: `metric(image, reference=None) -> float` on RGB PIL images."""

    name: str
    higher_is_better: bool
    full_reference: bool
    fn: Callable[[Image.Image, Image.Image | None], float]

    def __call__(self, image: Image.Image, reference: Image.Image | None = None) -> float:
        if self.full_reference and reference is None:
            raise ValueError(f"{self.name} is a full-reference metric: it needs the ground-truth image.")
        return float(self.fn(image, reference))


class MetricUnavailable(Exception):
    """A metric that cannot be built here; the message is the reason shown to the user."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (at most 200 characters), for a one-line reason."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."
