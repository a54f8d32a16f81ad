"""The `internvl_remote` backend: InternVL2/2.5 through the checkpoint's own remote code."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from coz_train.hub import resolve_model
from coz_train.policy.load import torch_dtype
from coz_train.rewards.critic.common import frozen, instruction_text, parse_score


class InternVLRemoteCritic:
    """InternVL2/2.5 through its own remote code: `model.chat` with per-image tile counts."""

    MEAN, STD, TILE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 448

    def __init__(self, cfg: DictConfig, device: torch.device, max_tiles: int = 6):
        if cfg.scoring != "generate":
            raise ValueError("critic.backend=internvl_remote supports critic.scoring=generate only.")
        if not cfg.trust_remote_code:
            raise ValueError(f"{cfg.name_or_path} needs its remote code: set critic.trust_remote_code=true.")
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model(cfg.name_or_path, "critic.name_or_path", cfg.revision)
        self.cfg, self.device, self.max_tiles = cfg, device, max_tiles
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=True, use_fast=False)
        dtype = torch_dtype(cfg.dtype)
        self.dtype = torch.bfloat16 if dtype == "auto" else dtype
        model = AutoModel.from_pretrained(path, revision=cfg.revision, dtype=self.dtype, trust_remote_code=True)
        self.model = frozen(model.to(device))

    def tiles(self, image: Any) -> torch.Tensor:
        """The checkpoint's dynamic tiling: the grid (<= max_tiles) closest to the aspect ratio, plus a thumbnail."""
        import torchvision.transforms.functional as F

        w, h = image.size
        grids = sorted({(i, j) for n in range(1, self.max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1) if i * j <= self.max_tiles}, key=lambda g: g[0] * g[1])
        cols, rows = min(grids, key=lambda g: abs(w / h - g[0] / g[1]))
        resized = image.resize((cols * self.TILE, rows * self.TILE))
        crops = [resized.crop((c * self.TILE, r * self.TILE, (c + 1) * self.TILE, (r + 1) * self.TILE)) for r in range(rows) for c in range(cols)]
        if len(crops) > 1:
            crops.append(image.resize((self.TILE, self.TILE)))
        tensors = [F.normalize(F.to_tensor(c.convert("RGB")), self.MEAN, self.STD) for c in crops]
        return torch.stack(tensors)  # [tiles, 3, 448, 448]

    @torch.no_grad()
    def score(self, images: list[list], texts: list[str]) -> list[float | None]:
        scores = []
        for imgs, text in zip(images, texts, strict=True):
            tiles = [self.tiles(image) for image in imgs]
            pixel_values = torch.cat(tiles).to(self.device, self.dtype)
            header = "".join(f"Image-{i + 1}: <image>\n" for i in range(len(imgs)))
            question = header + instruction_text(self.cfg, text)
            answer = self.model.chat(
                self.tokenizer,
                pixel_values,
                question,
                dict(max_new_tokens=self.cfg.max_new_tokens, do_sample=False),
                num_patches_list=[t.shape[0] for t in tiles],
            )
            scores.append(parse_score(answer, self.cfg.score_max))
        return scores
