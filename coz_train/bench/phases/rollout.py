"""The rollout phase: sampled completions of every prompt, `generate` as TRL calls it (plain) vs the fast rollout.

The fast rollout (`fast_generate`) encodes each image once (`perf.vision_cache`), prefills each group's prompt
once (`perf.rollout_prefix`) and decodes with the adapters merged (`perf.merge`). With `bench.static_cache` or
`bench.compiled_decode` it is also timed with a static KV cache or `perf.compiled_decode`, for the report only.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import GenerationConfig

from coz_train.bench.phases.checks import float32, greedy_compare
from coz_train.bench.phases.floors import decode_bytes_of
from coz_train.bench.phases.policy import PolicyBench
from coz_train.perf.compiled_decode import compiled_generation_config
from coz_train.perf.merge import merged_adapters
from coz_train.perf.vision_cache import install_vision_cache, uninstall_vision_cache


def rollout_phase(bench: PolicyBench) -> dict:
    """Sampled rollouts in train mode, as TRL generates (LoRA dropout on in the plain path; the fast path
    merges the adapters, so it has none), with TRL's `disable_compile=True`."""
    inputs = bench.prompt_inputs()
    tokenizer = bench.processor.tokenizer
    sample = dict(max_new_tokens=bench.keep, min_new_tokens=bench.keep, do_sample=True, temperature=1.0, top_p=1.0,
                  pad_token_id=tokenizer.pad_token_id, disable_compile=True)

    def plain() -> Any:
        return bench.policy.generate(**inputs, **sample)

    bench.policy.train()
    try:
        with torch.no_grad():
            t_plain, t_fast = bench.run(plain), bench.run(lambda: fast_generate(bench, inputs, sample))
        tokens = bench.n * bench.keep
        extra = {}
        if bench.static_cache:  # as TRL runs a static cache: uncompiled
            extra["fast_static"] = report_rollout(bench, inputs, dict(sample, cache_implementation="static"), tokens)
        if bench.compiled_decode:  # perf.compiled_decode
            config = compiled_generation_config(GenerationConfig(**sample))
            extra["fast_compiled"] = report_rollout(bench, inputs, dict(generation_config=config), tokens)
            if "error" not in extra["fast_compiled"]:
                extra["fast_compiled"]["agreement"] = bench.checked(lambda: compiled_agreement(bench, inputs, sample))
    finally:
        bench.policy.eval()
    decode_bytes = decode_bytes_of(bench.inner)
    prompt_tokens = int(bench.batch["attention_mask"][:: bench.shape.generations, : bench.prompt_len].sum())
    floor = ((bench.keep - 1) * decode_bytes / bench.dev.bandwidth
             + bench.flops_floor(bench.lm_params, prompt_tokens) + bench.vision_floor())
    result = dict(plain=dict(t_plain, tok_per_s=tokens / t_plain["s"]), fast=dict(t_fast, tok_per_s=tokens / t_fast["s"]),
                  floor_s=floor, check=bench.checked(lambda: rollout_check(bench, sample)),
                  work=dict(new_tokens=tokens, decode_steps=bench.keep, decode_weight_GB=decode_bytes / 1e9,
                            mode="train"))
    return dict(result, **extra)


def fast_generate(bench: PolicyBench, inputs: dict, options: dict) -> Any:
    """The fast rollout: a fresh vision cache, each group's prompt prefilled once, adapters merged."""
    install_vision_cache(bench.policy, 2 * bench.n)
    bench.rollout_prefix.enabled = True
    try:
        with merged_adapters(bench.policy):
            return bench.policy.generate(**inputs, **options)
    finally:
        bench.rollout_prefix.enabled = False
        uninstall_vision_cache(bench.policy)


def rollout_check(bench: PolicyBench, sample: dict) -> dict:
    """fp32, eval mode: greedy rollouts of group 0, plain vs fast, logits compared up to the first flip."""
    one = bench.prompt_inputs(0, bench.shape.generations)
    greedy = dict(sample, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad(), float32(bench.policy, bench.dev):
        a, b = bench.policy.generate(**one, **greedy), fast_generate(bench, one, greedy)
    start = one["input_ids"].shape[1]
    rows_a, rows_b = a.sequences[:, start:].tolist(), b.sequences[:, start:].tolist()
    la, lb = torch.stack(a.logits, dim=1), torch.stack(b.logits, dim=1)  # [N, steps, vocab]
    return greedy_compare(rows_a, rows_b, list(la), list(lb))


def report_rollout(bench: PolicyBench, inputs: dict, options: dict, tokens: int) -> dict:
    """The fast rollout with other generation options, for the report only (not in the step's phases): a
    static KV cache as TRL runs it (`grpo.generation_kwargs={cache_implementation: static}`, uncompiled: TRL
    sets `disable_compile=True`), or `perf.compiled_decode`. The first call (compilation) is timed apart."""
    compiled = "generation_config" in options and not options["generation_config"].disable_compile
    try:
        with torch.no_grad():
            start = time.perf_counter()
            fast_generate(bench, inputs, options)
            bench.dev.sync()
            first = time.perf_counter() - start
            timing = bench.run(lambda: fast_generate(bench, inputs, options))
        return dict(timing, tok_per_s=tokens / timing["s"], first_call_s=first, compiled=compiled, report_only=True)
    except Exception as err:  # a failure here must not cost the other measurements
        return {"error": f"{type(err).__name__}: {err}", "report_only": True}


def compiled_agreement(bench: PolicyBench, inputs: dict, sample: dict) -> dict:
    """Greedy rollouts of every row in the benchmark's dtype, the fast path eager vs compiled (the timed
    shapes, so nothing compiles again): how far the compiled decode steps agree. Reported, not judged: in
    bfloat16 rounding alone moves logits by more than the float32 tolerance (the float32 equality is
    tested on the CPU: tests/perf/test_compiled_decode.py)."""
    greedy = dict(sample, do_sample=False, output_logits=True, return_dict_in_generate=True)
    compiled = dict(generation_config=compiled_generation_config(GenerationConfig(**greedy)))
    with torch.no_grad():
        a, b = fast_generate(bench, inputs, greedy), fast_generate(bench, inputs, compiled)
    start = inputs["input_ids"].shape[1]
    la, lb = torch.stack(a.logits, dim=1), torch.stack(b.logits, dim=1)
    found = greedy_compare(a.sequences[:, start:].tolist(), b.sequences[:, start:].tolist(), list(la), list(lb))
    return dict({k: v for k, v in found.items() if k != "passed"}, dtype=str(bench.dev.dtype).removeprefix("torch."))
