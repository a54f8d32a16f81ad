"""Getting the text out of a TRL completion (plain string or conversational message list)."""

from __future__ import annotations

from typing import Any


def completion_text(completion: Any) -> str:
    """`"text"` or `[{"role": "assistant", "content": "text" | [{"type": "text", "text": ...}]}]` -> text."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts: list[str] = []
    for message in completion:
        if message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "".join(parts)
