"""Each distinct text of a tokenizer call tokenized once (`perf.text_cache`).

TRL tokenizes the B x G expanded prompts twice per step (for generation and for the log-prob inputs), each
~700 tokens at the paper's setting, G copies of every prompt: 128 sequences for 8 distinct ones.
`DedupTokenizer` stands in for the processor's tokenizer: a call on a list of texts with repeats tokenizes
the distinct texts once and hands each row its text's result. A fast tokenizer encodes every text on its own
and pads them to the longest one, which is the longest distinct one, so the output equals the real
tokenizer's bit for bit (tested). Calls it does not cover (text pairs, overflowing tokens, anything but a
list of strings) go to the real tokenizer.
"""

from __future__ import annotations

from typing import Any

import torch

_UNSERVED = ("text_pair", "text_target", "text_pair_target", "return_overflowing_tokens", "return_offsets_mapping")


class DedupTokenizer:
    """Everything but `__call__` is the real tokenizer's."""

    def __init__(self, tokenizer: Any):
        self.__dict__["_real"] = tokenizer
        self.__dict__["texts"] = 0  # texts asked for
        self.__dict__["tokenized"] = 0  # texts tokenized

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance checks (e.g. when the processor is saved) see the real one
        return type(self.__dict__["_real"])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "_real" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["_real"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)

    def __len__(self) -> int:
        return len(self._real)

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        if (args or not isinstance(text, list) or not all(isinstance(t, str) for t in text)
                or any(kwargs.get(k) for k in _UNSERVED)):
            return self._real(text, *args, **kwargs)
        unique = list(dict.fromkeys(text))
        self.__dict__["texts"] += len(text)
        self.__dict__["tokenized"] += len(unique)
        if len(unique) == len(text):
            return self._real(text, **kwargs)
        out = self._real(unique, **kwargs)
        where = {t: i for i, t in enumerate(unique)}
        index = [where[t] for t in text]
        for key, value in list(out.items()):
            if isinstance(value, torch.Tensor):
                out[key] = value[torch.tensor(index)]
            elif hasattr(value, "shape"):  # numpy
                out[key] = value[index]
            else:
                out[key] = [value[i] for i in index]
        if getattr(out, "_encodings", None) is not None:
            out._encodings = [out._encodings[i] for i in index]
        return out


def install_text_cache(processor: Any) -> DedupTokenizer | None:
    """Wrap `processor.tokenizer` (once); None when the processor has no tokenizer."""
    current = getattr(processor, "tokenizer", None)
    if current is None:
        return None
    if isinstance(current, DedupTokenizer):
        return current
    wrapped = DedupTokenizer(current)
    processor.tokenizer = wrapped
    return wrapped
