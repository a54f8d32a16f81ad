"""The `internvl_remote` backend: InternVL2/2.5 through the checkpoint's own remote code."""

from __future__ import annotations

import copy
from typing import Any

import torch
from omegaconf import DictConfig

from coz_train.hub import resolve_model
from coz_train.policy.load import torch_dtype
from coz_train.rewards.critic.common import frozen, instruction_text, parse_score
from coz_train.rewards.critic.tiling import tile_tensor

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
END_OF_TURN = "<|im_end|>"  # the internvl2_5 template's separator; generation stops there


def check_transformers_version(version: str | None = None) -> None:
    """The InternVL2.5 remote code runs on transformers 4.x only; under 5.x it is refused with the native route.

    Under transformers 5 the checkpoint's code fails to load (no `post_init`, no `GenerationMixin`, the
    cache passed as `cache=`), and once patched it computes InternLM2's rotary tables on the meta device,
    so logits are NaN and every answer empty: never a usable critic.
    """
    import transformers

    major = int((version or transformers.__version__).split(".")[0])
    if major >= 5:
        raise ValueError(
            f"critic.backend=internvl_remote runs the checkpoint's own code, written for transformers 4.x; this is "
            f"transformers {version or transformers.__version__}. Use the native conversion instead: "
            "critic=internvl2_5_8b (critic.backend=hf critic.trust_remote_code=false converts the checkpoint once, "
            "or convert by hand with python -m coz_train.critic_convert <folder> <out>)."
        )


class InternVLRemoteCritic:
    """InternVL2/2.5 through its own remote code: the prompts of `model.chat`, batched, with per-image tile counts."""

    def __init__(self, cfg: DictConfig, device: torch.device):
        if cfg.scoring != "generate":
            raise ValueError("critic.backend=internvl_remote supports critic.scoring=generate only.")
        if not cfg.trust_remote_code:
            raise ValueError(f"{cfg.name_or_path} needs its remote code: set critic.trust_remote_code=true.")
        check_transformers_version()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model(cfg.name_or_path, "critic.name_or_path", cfg.revision)
        self.cfg, self.device, self.max_tiles = cfg, device, cfg.get("max_tiles", 6)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=True, use_fast=False)
        dtype = torch_dtype(cfg.dtype)
        self.dtype = torch.bfloat16 if dtype == "auto" else dtype
        model = AutoModel.from_pretrained(path, revision=cfg.revision, dtype=self.dtype, trust_remote_code=True)
        self.model = frozen(model.to(device))

    def tiles(self, image: Any) -> torch.Tensor:
        """InternVL's dynamic tiling (`coz_train.rewards.critic.tiling`), [tiles, 3, 448, 448]."""
        return tile_tensor(image, self.max_tiles)

    def query(self, question: str, num_patches_list: list[int]) -> str:
        """The prompt `chat` builds: the checkpoint's conversation template, each `<image>` expanded to its tiles."""
        template = copy.deepcopy(self.model.conv_template)  # chat() starts from a fresh copy of it too
        template.system_message = self.model.system_message
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = template.get_prompt()
        for patches in num_patches_list:
            tokens = IMG_START + IMG_CONTEXT * self.model.num_image_token * patches + IMG_END
            query = query.replace("<image>", tokens, 1)
        return query

    @torch.no_grad()
    def score(self, images: list[list], texts: list[str]) -> list[float | None]:
        """One batched greedy generation for all candidates, with the prompts and decoding of the remote `chat`.

        The remote `batch_chat` expands one `<image>` per question, so with two images per candidate the
        queries are built here as `chat` builds them and handed to the model's own `generate`.
        """
        tiles = [[self.tiles(image) for image in imgs] for imgs in images]
        queries = []
        for per_image, text in zip(tiles, texts, strict=True):
            header = "".join(f"Image-{i + 1}: <image>\n" for i in range(len(per_image)))
            queries.append(self.query(header + instruction_text(self.cfg, text), [t.shape[0] for t in per_image]))
        pixel_values = torch.cat([t for per_image in tiles for t in per_image]).to(self.device, self.dtype)
        self.tokenizer.padding_side = "left"
        inputs = self.tokenizer(queries, return_tensors="pt", padding=True).to(self.device)
        self.model.img_context_token_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        eos = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        out = self.model.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"],
                                  attention_mask=inputs["attention_mask"], max_new_tokens=self.cfg.max_new_tokens,
                                  do_sample=False, eos_token_id=eos)
        answers = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [parse_score(a.split(END_OF_TURN)[0].strip(), self.cfg.score_max) for a in answers]
