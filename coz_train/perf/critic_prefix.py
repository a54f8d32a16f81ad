"""Critic scoring with a shared prefix (`perf.critic_prefix`): each group's images and instruction run once.

The critic's G conversations for one prompt hold the same two images and the same instruction text
up to the candidate prompt. Rows whose images are equal form a group; the group's prefix is the
longest run of token ids all its rows share (capped so that every row keeps at least one token of
its own, the one whose logits are read). Each distinct prefix runs once (left-padded together,
M-RoPE positions from the model's `get_rope_index`), its KV cache is repeated to the group's rows,
and only each row's suffix (candidate text, the rest of the instruction, the generation prompt)
runs on top, right-padded. Same scores as the plain path within float rounding:

- `next_token_logits`: raw logits at each row's last real token.
- `generate`: greedy decoding on the repeated cache, one token per step at explicit positions,
  rows cut after their first end-of-sequence token, `generation_config.repetition_penalty` applied
  over each row's real tokens as transformers' `RepetitionPenaltyLogitsProcessor` does. Other
  generation options that change the greedy choice are refused (`check_generation_config`).

A group whose shared tokens stop before its last image token (the images are equal, the text
before them is not) is split into single rows, each its own prefix: still exact, no sharing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from coz_train.perf.image_cache import digest
from coz_train.perf.prefix import Prefix, check_supported, group_owner, repeat_cache, run_continuation, run_prefix


@dataclass
class Generation:
    """Greedy continuations of a batch: new token ids per row (up to and including the first EOS)."""

    tokens: list[list[int]]
    finished: list[bool]  # the row stopped at an end-of-sequence token
    logits: list[torch.Tensor] | None  # per row [len(tokens), vocab] raw float32 logits (output_logits)
    prompt_tokens: list[int]

    @classmethod
    def cut(cls, rows: list[list[int]], eos_token_ids: set[int], logits: torch.Tensor | None,
            prompt_tokens: list[int]) -> Generation:
        """From greedy rows of new token ids ([N, steps] logits when kept): each row cut after its first EOS."""
        tokens, finished = [], []
        for row in rows:
            stop = next((i for i, t in enumerate(row) if t in eos_token_ids), None)
            tokens.append(row if stop is None else row[: stop + 1])
            finished.append(stop is not None)
        kept = None if logits is None else [logits[i, : len(t)] for i, t in enumerate(tokens)]
        return cls(tokens, finished, kept, prompt_tokens)


@dataclass
class SharedBatch:
    """A batch after its prefix and suffix passes, ready to read logits or to decode further."""

    inner: Any  # the unwrapped ForConditionalGeneration
    prefix: Prefix  # cache already repeated to the N rows and extended by the suffixes
    owner: torch.Tensor  # [N] prefix of each row
    rows: list[torch.Tensor]  # each row's unpadded token ids (the full conversation)
    suffix_mask: torch.Tensor  # [N, S] right-padded suffix mask
    suffix_len: torch.Tensor  # [N] real suffix tokens per row (>= 1)
    last_hidden: torch.Tensor  # [N, H] hidden state at each row's last real token


def _image_parts(conversation: list[dict]) -> list[Any]:
    """The images of a conversation, in order (content parts of type "image")."""
    images = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            images += [part.get("image") for part in content if isinstance(part, dict) and part.get("type") == "image"]
    return images


def _is_pil(image: Any) -> bool:
    return hasattr(image, "tobytes") and hasattr(image, "size") and hasattr(image, "mode")


def _same_image(a: Any, b: Any) -> bool:
    if a is b:
        return True
    return _is_pil(a) and _is_pil(b) and a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()


def _row_images(encoded: Any, inner: Any, n_rows: int) -> list[list[int]]:
    """Indices into `image_grid_thw` of each row's images (images are in row order, each row's in turn)."""
    grid = encoded.get("image_grid_thw")
    if grid is None:
        return [[] for _ in range(n_rows)]
    merge = inner.config.vision_config.spatial_merge_size
    tokens_per_image = (grid.prod(dim=-1) // (merge * merge)).tolist()
    image_tokens = (encoded["input_ids"] == inner.config.image_token_id).sum(dim=1).tolist()
    out, next_image = [], 0
    for wanted in image_tokens:
        mine, seen = [], 0
        while seen < wanted:
            if next_image >= len(tokens_per_image):
                raise ValueError("critic prefix sharing: the batch's image tokens do not match its image grids.")
            mine.append(next_image)
            seen += tokens_per_image[next_image]
            next_image += 1
        if seen != wanted:
            raise ValueError("critic prefix sharing: the batch's image tokens do not match its image grids.")
        out.append(mine)
    return out


def _common_length(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if len(differ) else n


def plan_groups(conversations: list[list[dict]], rows: list[torch.Tensor],
                mm_rows: list[torch.Tensor]) -> list[tuple[list[int], int]]:
    """(member rows, prefix length) per prefix: rows with equal images share the longest common token prefix,
    cut to leave each row at least one suffix token; a group whose prefix would not hold every image token
    becomes single rows (prefix = all but the last token)."""
    images = [_image_parts(c) for c in conversations]
    if len(images) != len(rows):
        raise ValueError(f"critic prefix sharing: {len(conversations)} conversations but {len(rows)} encoded rows.")

    fingerprints: dict[int, Any] = {}  # by object: the G rows of a group often hold the very same images

    def fingerprint(image: Any) -> Any:
        if id(image) not in fingerprints:
            # the image cache's digest: once per image object, which the critic's processor has hashed already
            fingerprints[id(image)] = ((image.size, image.mode, digest(image)) if _is_pil(image)
                                       else ("object", id(image)))
        return fingerprints[id(image)]

    def key(row: int) -> Any:
        return tuple(fingerprint(image) for image in images[row])

    def same(i: int, j: int) -> bool:
        return len(images[i]) == len(images[j]) and all(_same_image(a, b) for a, b in zip(images[i], images[j], strict=True))

    owner, reps = group_owner([key(r) for r in range(len(rows))], same)
    plan: list[tuple[list[int], int]] = []
    for g, rep in enumerate(reps):
        members = (owner == g).nonzero().flatten().tolist()
        length = min(len(rows[m]) for m in members) - 1
        for m in members:
            length = min(length, _common_length(rows[rep], rows[m]))
        if all(not mm_rows[m][length:].any() for m in members):
            plan.append((members, length))
            continue
        for m in members:  # same images, different text before them: no sharing, still exact
            if mm_rows[m][-1:].any():
                raise ValueError("critic prefix sharing: a conversation ends in an image token; "
                                 "set perf.critic_prefix=false.")
            plan.append(([m], len(rows[m]) - 1))
    return plan


def modality_types(encoded: Any, inner: Any) -> torch.Tensor:
    """The batch's text (0) / image (1) token types: the processor's, else read off the image token."""
    mm = encoded.get("mm_token_type_ids")
    return (encoded["input_ids"] == inner.config.image_token_id).long() if mm is None else mm


def unpadded_rows(encoded: Any, inner: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each row's real token ids and their token types, padding dropped."""
    mask = encoded["attention_mask"].bool()
    ids, mm = encoded["input_ids"], modality_types(encoded, inner)
    return [ids[r][mask[r]] for r in range(ids.shape[0])], [mm[r][mask[r]] for r in range(ids.shape[0])]


def shared_forward(model: Any, encoded: Any, conversations: list[list[dict]], pad_token_id: int, *,
                   position_offset: int = 0) -> SharedBatch:
    """Prefix pass (once per group) and suffix pass (every row) over an encoded, left-padded critic batch.

    `encoded` is the processor's output for `conversations` (`HFCritic.encode`). `position_offset` shifts
    the suffix positions: only for negative controls in tests.
    """
    inner = check_supported(model, "perf.critic_prefix")
    if encoded.get("pixel_values_videos") is not None:
        raise ValueError("perf.critic_prefix handles images, not videos: set perf.critic_prefix=false.")
    input_ids = encoded["input_ids"]
    mm = modality_types(encoded, inner)
    n_rows, device = input_ids.shape[0], input_ids.device
    rows, mm_rows = unpadded_rows(encoded, inner)
    plan = plan_groups(conversations, rows, mm_rows)

    # Prefixes, left-padded together; each prefix's pixels are those of its first row.
    width = max(length for _, length in plan)
    prefix_ids = torch.full((len(plan), width), pad_token_id, dtype=input_ids.dtype, device=device)
    prefix_mask = torch.zeros((len(plan), width), dtype=encoded["attention_mask"].dtype, device=device)
    prefix_mm = torch.zeros((len(plan), width), dtype=mm.dtype, device=device)
    row_images = _row_images(encoded, inner, n_rows)
    grid = encoded.get("image_grid_thw")
    pixel_values, image_grid_thw = None, None
    if grid is not None:
        starts = torch.cat([grid.new_zeros(1), grid.prod(dim=-1).cumsum(0)]).tolist()
        images = [i for members, _ in plan for i in row_images[members[0]]]
        pixel_values = torch.cat([encoded["pixel_values"][starts[i] : starts[i + 1]] for i in images])
        image_grid_thw = grid[images]
    owner = torch.empty(n_rows, dtype=torch.long)
    for p, (members, length) in enumerate(plan):
        rep = members[0]
        prefix_ids[p, width - length :] = rows[rep][:length]
        prefix_mask[p, width - length :] = 1
        prefix_mm[p, width - length :] = mm_rows[rep][:length]
        owner[members] = p
    owner = owner.to(device)

    # Suffixes, right-padded.
    suffixes = [rows[r][plan[int(owner[r])][1] :] for r in range(n_rows)]
    suffix_len = torch.tensor([len(s) for s in suffixes], device=device)
    suffix_ids = torch.full((n_rows, int(suffix_len.max())), pad_token_id, dtype=input_ids.dtype, device=device)
    suffix_mask = torch.zeros(suffix_ids.shape, dtype=prefix_mask.dtype, device=device)
    for r, suffix in enumerate(suffixes):
        suffix_ids[r, : len(suffix)] = suffix
        suffix_mask[r, : len(suffix)] = 1

    prefix = run_prefix(inner, prefix_ids, prefix_mask, mm_token_type_ids=prefix_mm, pixel_values=pixel_values,
                        image_grid_thw=image_grid_thw, position_offset=position_offset)
    repeat_cache(prefix.cache, owner)
    hidden = run_continuation(inner, prefix, owner, suffix_ids, suffix_mask)
    last_hidden = hidden[torch.arange(n_rows, device=device), suffix_len - 1]
    return SharedBatch(inner, prefix, owner, rows, suffix_mask, suffix_len, last_hidden)


@torch.no_grad()
def next_token_logits(model: Any, encoded: Any, conversations: list[list[dict]], pad_token_id: int, *,
                      position_offset: int = 0) -> torch.Tensor:
    """Raw logits of the first answer token, [N, vocab] float32 (as `HFCritic.next_token_logits`)."""
    batch = shared_forward(model, encoded, conversations, pad_token_id, position_offset=position_offset)
    return batch.inner.lm_head(batch.last_hidden).float()


# Generation options that change which token greedy decoding picks (or where it stops), with the value
# that leaves greedy decoding alone. repetition_penalty is applied here; forced_bos_token_id acts only on
# an empty prompt; sampling warpers do not apply to greedy decoding.
_UNSUPPORTED_OPTIONS = {
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1, 1.0),
    "num_beams": (None, 1),
    "watermarking_config": (None,),
    "stop_strings": (None,),
    "max_time": (None,),
}


def check_generation_config(generation_config: Any) -> None:
    """A ValueError for any generation option the shared-prefix greedy loop does not reproduce."""
    set_options = []
    for name, neutral in _UNSUPPORTED_OPTIONS.items():
        value = getattr(generation_config, name, None)
        if not any(value is n or (n is not None and value == n) for n in neutral):
            set_options.append(f"{name}={value!r}")
    if set_options:
        raise ValueError(
            f"perf.critic_prefix decodes greedily with repetition_penalty only, but the critic's generation config "
            f"sets {', '.join(set_options)}: set perf.critic_prefix=false."
        )


def _penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty: seen tokens' logits divided by the penalty (multiplied when negative)."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


@torch.no_grad()
def generate(model: Any, encoded: Any, conversations: list[list[dict]], max_new_tokens: int, *,
             eos_token_ids: set[int], pad_token_id: int, output_logits: bool = False,
             position_offset: int = 0) -> Any:
    """Greedy decoding on the shared-prefix cache; the same `Generation` as `HFCritic.generate`."""

    inner = check_supported(model, "perf.critic_prefix")
    check_generation_config(inner.generation_config)
    penalty = inner.generation_config.repetition_penalty
    penalty = 1.0 if penalty is None else float(penalty)

    batch = shared_forward(inner, encoded, conversations, pad_token_id, position_offset=position_offset)
    n_rows, device = len(batch.rows), batch.last_hidden.device
    prompt_tokens = [len(row) for row in batch.rows]
    if max_new_tokens <= 0:
        return Generation([[] for _ in range(n_rows)], [False] * n_rows, [] if output_logits else None, prompt_tokens)
    raw = batch.inner.lm_head(batch.last_hidden).float()
    vocab = raw.shape[-1]
    seen = None
    if penalty != 1.0:
        seen = torch.zeros((n_rows, vocab), dtype=torch.bool, device=device)
        for r, row in enumerate(batch.rows):
            seen[r, row[row < vocab]] = True
    eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=device)
    past_mask = torch.cat([batch.prefix.attention_mask[batch.owner], batch.suffix_mask], dim=1)
    first_position = batch.prefix.next_position[batch.owner] + batch.suffix_len  # of the first new token
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    step_logits: list[torch.Tensor] = []

    def choose(raw: torch.Tensor) -> torch.Tensor:
        """Greedy token per row from raw logits [N, vocab]; records it and marks rows that wrote an EOS."""
        scores = raw if seen is None else _penalise(raw, seen, penalty)
        token = scores.argmax(dim=-1)
        steps.append(token)
        if output_logits:
            step_logits.append(raw)
        if seen is not None:
            seen[torch.arange(n_rows, device=device), token] = True
        finished.logical_or_(torch.isin(token, eos))
        return token

    token = choose(raw)
    for step in range(1, max_new_tokens):
        if bool(finished.all()):
            break
        # The cache holds prefix + suffix + `step - 1` new tokens; this step feeds new token `step - 1`.
        mask = torch.cat([past_mask, past_mask.new_ones((n_rows, step))], dim=1)
        positions = (first_position + step - 1).view(1, n_rows, 1).expand(3, -1, -1)
        # Rows that wrote their EOS keep decoding (batched); what they write after it is cut below.
        out = batch.inner.model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                                cache=batch.prefix.cache, use_cache=True)
        token = choose(batch.inner.lm_head(out.last_hidden_state[:, -1]).float())

    logits = torch.stack(step_logits, dim=1) if output_logits else None  # [N, steps, vocab]
    return Generation.cut(torch.stack(steps, dim=1).tolist(), eos_token_ids, logits, prompt_tokens)
