"""Each distinct text of a tokenizer call tokenized once (`perf.text_cache`).

TRL tokenizes the B x G expanded prompts twice per step (for generation and for the log-prob inputs), each
~700 tokens at the paper's setting, G copies of every prompt: 128 sequences for 8 distinct ones.
`install_text_cache(processor)` wraps the processor's tokenizer: a call on a list of texts with repeats
tokenizes the distinct texts once and hands each row its text's result. A fast tokenizer encodes every text on its own
and pads them to the longest one, which is the longest distinct one, so the output equals the real
tokenizer's bit for bit (tested). Calls it does not cover (text pairs, overflowing tokens, anything but a
list of strings) go to the real tokenizer.

The wrapper says what it is. The processor's `tokenizer` becomes an instance of `Dedup<Class>`, a subclass of
the tokenizer's own class (made once per class, e.g. `DedupTokenizersBackend`) that shares the wrapped
tokenizer's attribute dictionary: it is an instance of the library's class by inheritance, `type()` names it
as the deduplicating one, and reading or setting an attribute reads or sets the wrapped tokenizer's. Its own
are `__call__` and two counters, kept in slots out of the shared dictionary. `save_pretrained` is the wrapped
tokenizer's, so `tokenizer_class` in tokenizer_config.json names the library's class and a saved processor
loads back as the library's own. A copy or pickle of the wrapper is a new wrapper of a copy of the wrapped
tokenizer.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from coz_train.perf.wrapper_class import unwrapped, wrapper_class

_UNSERVED = ("text_pair", "text_target", "text_pair_target", "return_overflowing_tokens", "return_offsets_mapping")


def _dedup_class(kind: type) -> type:
    """`Dedup<kind>`: the tokenizer class `kind` with the deduplication in front of its `__call__`, one per class."""
    return wrapper_class("Dedup", DedupTokenizer, kind)


def _unwrapped(tokenizer: Any) -> Any:
    return unwrapped(tokenizer, DedupTokenizer)


class DedupTokenizer:
    """The base of every `Dedup<Class>` (see the module's docstring): `DedupTokenizer(tokenizer)` is an instance of
    `Dedup<type(tokenizer)>` sharing `tokenizer`'s attributes."""

    __slots__ = ("_wrapped", "texts", "tokenized")

    def __new__(cls, tokenizer: Any) -> DedupTokenizer:
        return object.__new__(_dedup_class(type(_unwrapped(tokenizer))) if cls is DedupTokenizer else cls)

    def __init__(self, tokenizer: Any):
        tokenizer = _unwrapped(tokenizer)
        object.__setattr__(self, "__dict__", tokenizer.__dict__)  # the wrapped one's attributes, shared
        self._wrapped = tokenizer
        self.texts = 0  # texts asked for
        self.tokenized = 0  # texts tokenized

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped tokenizer's files (its class as `tokenizer_class`)."""
        return self._wrapped.save_pretrained(*args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return DedupTokenizer, (self._wrapped,)

    def __copy__(self) -> DedupTokenizer:
        return DedupTokenizer(copy.copy(self._wrapped))

    def __deepcopy__(self, memo: dict) -> DedupTokenizer:
        return DedupTokenizer(copy.deepcopy(self._wrapped, memo))

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        if (args or not isinstance(text, list) or not all(isinstance(t, str) for t in text)
                or any(kwargs.get(k) for k in _UNSERVED)):
            return self._wrapped(text, *args, **kwargs)
        unique = list(dict.fromkeys(text))
        self.texts += len(text)
        self.tokenized += len(unique)
        if len(unique) == len(text):
            return self._wrapped(text, **kwargs)
        out = self._wrapped(unique, **kwargs)
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
