"""The critic phase: the critic VLM scoring every completion, one group per batch as the reward batches it.

`bench.critic_scoring=logits` times the next-token logits, `generate` greedy decoding of critic.max_new_tokens
tokens. The plain path runs every row's full conversation; the fast path (`perf.critic_prefix`) runs what a
group's conversations share once. The batches are encoded beforehand: the encoding is CPU preprocessing,
which the preprocess phase counts.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from coz_train.bench.phases.checks import LOGITS_TOL, control_off, float32, greedy_compare, guarded_check, rel_err
from coz_train.bench.phases.floors import decode_bytes_of, lm_params_of, params_of
from coz_train.bench.phases.timing import Device, timed
from coz_train.bench.workload import Shape
from coz_train.perf import critic_prefix
from coz_train.perf.prefix import unwrap

CRITIC_SCORING = ("logits", "generate")


def critic_phase(cfg: Any, spec: dict, processor: Any, batch: dict, dev: Device, shape: Shape,
                 scoring: str = "logits", check: bool = True) -> dict:
    """Critic scoring of every completion, one group per batch as the reward batches it, on batches encoded
    beforehand (the encoding is CPU preprocessing, which the preprocess phase counts):
    `scoring=logits` the next-token logits, `scoring=generate` greedy decoding of critic.max_new_tokens tokens.

    The critic is built here and freed afterwards, so the policy phases have the memory."""
    from omegaconf import OmegaConf

    from coz_train.bench.workload import build_model
    from coz_train.rewards.critic import HFCritic

    if scoring not in CRITIC_SCORING:
        raise ValueError(f"bench.critic_scoring='{scoring}' is not one of {', '.join(CRITIC_SCORING)}.")
    model = build_model(spec, processor.tokenizer, dev.device, dev.dtype, cfg.seed + 7)
    # the critic's conversation and encoding; "generate" skips the score-token check of the logits mode
    critic = HFCritic.from_parts(OmegaConf.merge(cfg.critic, {"scoring": "generate"}), dev.device, processor, model)
    G = shape.generations
    conversations = [critic.conversation(images, text)
                     for images, text in zip(batch["images"], batch["completion_text"], strict=True)]
    groups = [conversations[g * G:(g + 1) * G] for g in range(shape.groups)]
    pad, eos, new_tokens = processor.tokenizer.pad_token_id, critic.eos_token_ids, int(cfg.critic.max_new_tokens)
    start = time.perf_counter()
    encoded = [critic.encode(group) for group in groups]  # once, outside the timings
    dev.sync()
    encode_s = time.perf_counter() - start
    pairs = list(zip(encoded, groups, strict=True))

    if scoring == "logits":
        def plain() -> Any:
            return [model(**e).logits[:, -1].float() for e in encoded]

        def fast() -> Any:
            return [critic_prefix.next_token_logits(model, e, group, pad) for e, group in pairs]
    else:
        def plain() -> Any:
            return [model.generate(**e, max_new_tokens=new_tokens, do_sample=False) for e in encoded]

        def fast() -> Any:
            return [critic_prefix.generate(model, e, group, new_tokens, eos_token_ids=eos, pad_token_id=pad)
                    for e, group in pairs]

    with torch.no_grad():
        t_plain = timed(dev, plain, shape.warmup, shape.reps)
        t_fast = timed(dev, fast, shape.warmup, shape.reps)

    if scoring == "logits":
        result_check = guarded_check(check, dev, lambda: logits_check(model, dev, encoded[0], groups[0], pad))
    else:
        result_check = guarded_check(check, dev, lambda: generate_check(model, dev, encoded[0], groups[0], new_tokens,
                                                                        eos, pad))
    inner = unwrap(model)
    lm = lm_params_of(inner)
    prompt_tokens = sum(int(e["attention_mask"].sum()) for e in encoded)
    plans = [critic_prefix.plan_groups(group, *critic_prefix.unpadded_rows(e, inner)) for e, group in pairs]
    distinct = sum(int(e["attention_mask"].sum()) - sum(length * (len(m) - 1) for m, length in plan)
                   for e, plan in zip(encoded, plans, strict=True))
    patches = int(batch["image_grid_thw"].prod(-1).view(-1, 2)[::G].sum())
    floor = (2 * lm * distinct + 2 * params_of(inner.model.visual) * patches) / dev.peak_flops
    work = dict(rows=len(conversations), scoring=scoring, tokens_plain=prompt_tokens, tokens_distinct=distinct,
                encode_s_not_timed=encode_s)
    tokens = prompt_tokens
    if scoring == "generate":
        # each batch decodes its new tokens one step at a time: the weights are read once per step and batch
        floor += shape.groups * (new_tokens - 1) * decode_bytes_of(inner) / dev.bandwidth
        tokens = len(conversations) * new_tokens
        work.update(new_tokens=tokens, decode_steps=new_tokens)
    return dict(plain=dict(t_plain, tok_per_s=tokens / t_plain["s"]), fast=dict(t_fast, tok_per_s=tokens / t_fast["s"]),
                floor_s=floor, check=result_check, work=work)


def logits_check(model: Any, dev: Device, first: dict, group: list, pad: int | None) -> dict:
    """fp32: the next-token logits of the first batch, fast vs plain, and a control at positions shifted by one."""
    with torch.no_grad(), float32(model, dev):
        a = model(**first).logits[:, -1].float()
        b = critic_prefix.next_token_logits(model, first, group, pad)
        wrong = critic_prefix.next_token_logits(model, first, group, pad, position_offset=1)
    result = dict(logits_rel_err=rel_err(b, a), control_position_plus_one_rel_err=rel_err(wrong, a), rows=len(a))
    result["passed"] = (result["logits_rel_err"] < LOGITS_TOL
                        and control_off(result["control_position_plus_one_rel_err"], result["logits_rel_err"]))
    return result


def generate_check(model: Any, dev: Device, first: dict, group: list, new_tokens: int, eos: set[int],
                   pad: int | None) -> dict:
    """fp32: greedy decodings of the first batch, fast vs plain, logits compared up to the first flip, and a
    control at positions shifted by one."""
    with torch.no_grad(), float32(model, dev):
        a = model.generate(**first, max_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True,
                           output_logits=True)
        b = critic_prefix.generate(model, first, group, new_tokens, eos_token_ids=eos, pad_token_id=pad,
                                   output_logits=True)
        wrong = critic_prefix.generate(model, first, group, 1, eos_token_ids=eos, pad_token_id=pad,
                                       output_logits=True, position_offset=1)
    start = first["input_ids"].shape[1]
    plain_rows = critic_prefix.Generation.cut(a.sequences[:, start:].tolist(), eos, None, []).tokens
    plain_logits = torch.stack(a.logits, dim=1).float()  # [N, steps, vocab]
    result = greedy_compare(plain_rows, b.tokens, list(plain_logits), b.logits)
    result["control_position_plus_one_rel_err"] = rel_err(torch.stack([w[0] for w in wrong.logits]),
                                                         plain_logits[:, 0])
    result["passed"] = result["passed"] and control_off(result["control_position_plus_one_rel_err"],
                                                        result["logits_rel_err"])
    return result
