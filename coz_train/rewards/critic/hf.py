"""The `hf` backend: a transformers image-text-to-text critic scoring batches (see `coz_train.rewards.critic`)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from coz_train.hub import resolve_model
from coz_train.perf import critic_prefix
from coz_train.perf.critic_prefix import Generation
from coz_train.perf.prefix import check_supported
from coz_train.policy.load import encode_chats, load_processor, load_vlm
from coz_train.rewards.critic.common import check_score_logits, frozen, instruction_text, parse_score


class HFCritic:
    """A transformers image-text-to-text critic scoring batches of (images, prompt text).

    The pieces (`conversation`, `encode`, `next_token_logits`, `generate`) are shared with the critic
    server (`coz_train.critic_server`), which runs the same code on conversations it receives.

    `shared_prefix` (`perf.critic_prefix`, Qwen2-VL / Qwen2.5-VL critics): conversations with the same
    images run their common prefix once and only their own suffixes on top (`coz_train.perf.critic_prefix`);
    same scores as the plain path within float rounding.

    `encoder` (`perf.text_cache`): a `templated.TemplatedEncoder` encoding each batch with its shared heads
    (template, images, image tokens) processed once; the processor's own encoding, bit for bit. None: the
    processor's chat template encodes every row whole.
    """

    encoder: Any = None

    def __init__(self, cfg: DictConfig, device: torch.device, shared_prefix: bool = False):
        path = resolve_model(cfg.name_or_path, "critic.name_or_path", cfg.revision)
        if not cfg.trust_remote_code:  # an InternVL2.5 hub checkpoint: its native conversion (.conversion)
            from coz_train.rewards.critic.conversion.cache import native_internvl

            path = native_internvl(path, cfg.revision, cfg.get("max_tiles", 6))
        processor = load_processor(path, cfg)
        images = getattr(processor, "image_processor", None)
        if cfg.get("max_tiles") is not None and getattr(images, "crop_to_patches", False):
            images.max_patches = cfg.max_tiles  # InternVL tiling: critic.max_tiles, whatever the folder saved
        self._setup(cfg, device, processor, load_vlm(path, cfg), shared_prefix)

    @classmethod
    def from_parts(cls, cfg: DictConfig, device: torch.device, processor: Any, model: torch.nn.Module,
                   shared_prefix: bool = False) -> HFCritic:
        """A critic around a model and processor already in memory (the benchmark builds them from config)."""
        critic = cls.__new__(cls)
        critic._setup(cfg, device, processor, model, shared_prefix)
        return critic

    def _setup(self, cfg: DictConfig, device: torch.device, processor: Any, model: torch.nn.Module,
               shared_prefix: bool) -> None:
        self.cfg, self.device, self.shared_prefix = cfg, device, shared_prefix
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"  # last position = next token for every row
        self.model = frozen(model.to(device))
        if shared_prefix:
            check_supported(self.model, "perf.critic_prefix")
        self.score_token_ids = self._score_tokens() if cfg.scoring == "logits" else None

    def _score_tokens(self) -> torch.Tensor:
        tokenizer = self.processor.tokenizer
        ids = []
        for value in range(self.cfg.score_max + 1):
            pieces = tokenizer.encode(str(value), add_special_tokens=False)
            if len(pieces) != 1:
                raise ValueError(
                    f"critic.scoring=logits needs every score 0..{self.cfg.score_max} to be one token, but "
                    f"'{value}' is {len(pieces)} tokens for {self.cfg.name_or_path}: set critic.score_max=9 "
                    "or use critic.scoring=generate."
                )
            ids.append(pieces[0])
        return torch.tensor(ids, device=self.device)

    def conversation(self, images: list, text: str) -> list[dict]:
        parts = [{"type": "image", "image": image} for image in images]
        return [{"role": "user", "content": [*parts, {"type": "text", "text": instruction_text(self.cfg, text)}]}]

    def encode(self, conversations: list[list[dict]]) -> Any:
        if self.encoder is not None:
            return self.encoder(conversations).to(self.device)
        return encode_chats(self.processor, conversations).to(self.device)

    @torch.no_grad()
    def next_token_logits(self, conversations: list[list[dict]]) -> torch.Tensor:
        """Raw logits of the first answer token, [N, vocab] float32."""
        if self.shared_prefix:
            return critic_prefix.next_token_logits(self.model, self.encode(conversations), conversations,
                                                   self.processor.tokenizer.pad_token_id)
        return self.model(**self.encode(conversations)).logits[:, -1, :].float()

    @property
    def eos_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}

    @torch.no_grad()
    def generate(self, conversations: list[list[dict]], max_new_tokens: int, output_logits: bool = False) -> Generation:
        """Greedy decoding of a batch; rows are cut after their first end-of-sequence token."""
        if self.shared_prefix:
            return critic_prefix.generate(self.model, self.encode(conversations), conversations, max_new_tokens,
                                          eos_token_ids=self.eos_token_ids,
                                          pad_token_id=self.processor.tokenizer.pad_token_id,
                                          output_logits=output_logits)
        inputs = self.encode(conversations)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                  return_dict_in_generate=True, output_logits=output_logits)
        new = out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
        logits = torch.stack(out.logits, dim=1).float() if output_logits else None  # [N, steps, vocab]
        return Generation.cut(new, self.eos_token_ids, logits, inputs["attention_mask"].sum(dim=1).tolist())

    def decode(self, tokens: list[int]) -> str:
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)

    def score_conversations(self, conversations: list[list[dict]]) -> list[float | None]:
        if self.score_token_ids is not None:
            logits = self.next_token_logits(conversations)[:, self.score_token_ids]  # [N, score_max + 1]
            check_score_logits(logits, self.cfg.name_or_path)
            probs = torch.softmax(logits, dim=-1)  # [N, score_max + 1]
            values = torch.arange(self.cfg.score_max + 1, device=self.device, dtype=probs.dtype)
            return (probs @ values).tolist()
        answers = [self.decode(t) for t in self.generate(conversations, self.cfg.max_new_tokens).tokens]
        return [parse_score(answer, self.cfg.score_max) for answer in answers]

    def score(self, images: list[list], texts: list[str]) -> list[float | None]:
        return self.score_conversations([self.conversation(imgs, t) for imgs, t in zip(images, texts, strict=True)])
