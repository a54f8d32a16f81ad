"""Prompt sources for the CoZ chain: none, a fixed text, the base VLM, the VLM with a GRPO adapter.

The VLM gets exactly the message it was trained on (`coz_train.data.prompts.zoom_prompt`: the
paper's system text, [previous state, zoomed image] in the user turn; the single-image variant
when a method hands it one image, as `recursive` and `onestep` do) and writes at most
`eval.max_new_tokens` tokens, greedy by default. One model serves both `vlm` and `vlm+adapter`:
the adapter is attached once and switched off for the base prompts.

`user` replaces the prompt with `eval.user_prompt` (the official `--prompt_type null --prompt`);
`vlm+user` and `vlm+adapter+user` append it to the VLM's prompt as the official `--prompt` does
with VLM prompts: `f"{vlm}, {user},"` (`append_user_prompt`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from coz_train.data.prompts import zoom_prompt
from coz_train.hub import resolve_model
from coz_train.policy import encode_chats, load_processor, load_vlm
from coz_train.policy.adapters import AdapterError, check_adapter_folder, load_adapter

log = logging.getLogger(__name__)

USER_SUFFIX = "+user"
ADAPTER_SOURCE = "vlm+adapter"
PROMPT_SOURCES = ("null", "user", "vlm", "vlm+adapter", "vlm+user", "vlm+adapter+user")


def uses_user_prompt(source: str) -> bool:
    return source == "user" or source.endswith(USER_SUFFIX)


def is_vlm(source: str) -> bool:
    return source.startswith("vlm")


def as_base(source: str) -> str:
    """The same source with the base model's prompts: vlm+adapter+user -> vlm+user (also in a result name)."""
    return source.replace(ADAPTER_SOURCE, "vlm")


def as_adapter(source: str) -> str:
    """The same source with the adapter's prompts: vlm -> vlm+adapter, vlm+user -> vlm+adapter+user."""
    return ADAPTER_SOURCE + as_base(source).removeprefix("vlm")


def append_user_prompt(prompt: str, user_prompt: str) -> str:
    """The official composition of a VLM prompt and `--prompt`: "<vlm prompt>, <user prompt>,"."""
    return f"{prompt}, {user_prompt},"


def check_adapter(path: str | None) -> Path:
    if not path:
        raise AdapterError("prompt source 'vlm+adapter' needs eval.adapter=<training run>/adapter.")
    return check_adapter_folder(path, "eval.adapter")


class VLMPrompter:
    def __init__(self, policy_cfg: Any, adapter: str | None, device: torch.device, max_new_tokens: int,
                 do_sample: bool, batch_size: int):
        path = resolve_model(policy_cfg.name_or_path, "policy.name_or_path", policy_cfg.revision)
        self.processor = load_processor(path, policy_cfg)
        self.processor.tokenizer.padding_side = "left"
        model = load_vlm(path, policy_cfg)
        if adapter:
            model = self._attach(model, check_adapter(adapter), policy_cfg.name_or_path)
        self.model = model.to(device).eval()
        self.device, self.has_adapter = device, bool(adapter)
        self.max_new_tokens, self.do_sample, self.batch_size = max_new_tokens, do_sample, batch_size

    @staticmethod
    def _attach(model: Any, folder: Path, base_name: str) -> Any:
        """The adapter in full (either module layout, e.g. the released CoZ checkpoint-10000), or an error."""
        try:
            return load_adapter(model, folder, is_trainable=False, key="eval.adapter")
        except AdapterError as err:
            raise AdapterError(f"{err} The policy is {base_name}: policy=... must match the adapter's base model.") from None

    @torch.no_grad()
    def _generate(self, pairs: list[list[Image.Image]]) -> list[str]:
        conversations = []
        for images in pairs:
            messages = zoom_prompt(single_image=len(images) == 1)
            parts = [{"type": "image", "image": image} for image in images]
            conversations.append([messages[0], {"role": "user", "content": parts}])
        inputs = encode_chats(self.processor, conversations).to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=self.do_sample)
        texts = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [text.strip() for text in texts]

    def with_max_new_tokens(self, max_new_tokens: int) -> VLMPrompter:
        """The same model and processor writing at most `max_new_tokens` tokens (the full-image chain's tile prompts)."""
        other = copy.copy(self)
        other.max_new_tokens = max_new_tokens
        return other

    def prompts(self, pairs: list[list[Image.Image]], use_adapter: bool) -> list[str]:
        out: list[str] = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            if self.has_adapter and not use_adapter:
                with self.model.disable_adapter():
                    out += self._generate(batch)
            else:
                out += self._generate(batch)
        return out


def prompt_source(name: str, prompter: VLMPrompter | None, user_prompt: str | None):
    """A callable [[previous, zoomed], ...] or [[zoomed], ...] -> prompts for the named source."""
    if name not in PROMPT_SOURCES:
        raise ValueError(f"eval.prompt_sources: '{name}' is not one of {PROMPT_SOURCES}.")
    if uses_user_prompt(name) and not user_prompt:
        raise ValueError(f"prompt source '{name}' needs eval.user_prompt='<text>'.")
    if name == "null":
        return lambda items: [""] * len(items)
    if name == "user":
        return lambda items: [user_prompt] * len(items)
    assert prompter is not None
    use_adapter = name.removesuffix(USER_SUFFIX) == "vlm+adapter"
    if not name.endswith(USER_SUFFIX):
        return lambda items: prompter.prompts(items, use_adapter=use_adapter)
    return lambda items: [append_user_prompt(p, user_prompt) for p in prompter.prompts(items, use_adapter=use_adapter)]
