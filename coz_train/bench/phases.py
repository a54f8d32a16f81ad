"""The phases of one GRPO step, each run the plain way (as TRL + PEFT do) and with the perf switches.

Every phase returns {"plain": timing, "fast": timing, "floor_s": ..., "work": ..., "check": ...}.
Timings are medians over `reps` runs after `warmup` runs, with the device synchronised; `peak_GB`
is the device's peak allocated memory during the runs (GPU only). Checks compare the fast path with
the plain one in float32 (the model is converted for the check and back, which is exact for
bfloat16 weights) on one group or a few rows, with negative controls that must fail. `check` is
None when checks are off (`bench.check=false`); a check that raises (e.g. out of memory) gives
{"error": ..., "passed": False} and keeps the phase's timings.

Tolerances sit above the float32 noise floor at the real depth (36 policy / 28 critic layers, where
float32 rounding alone reaches ~1e-5 relative on logits): logits, log-probs and features < 1e-4,
LoRA gradients < 1e-3; a negative control must be off by more than 100x the measured error and
more than 1e-3.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from coz_train.bench.workload import Shape, rows
from coz_train.perf import image_cache
from coz_train.perf.compiled_decode import compiled_generation_config
from coz_train.perf.group_prefix import KWARG, install_group_prefix
from coz_train.perf.image_cache import install_image_cache
from coz_train.perf.merge import merged_adapters
from coz_train.perf.prefix import unwrap
from coz_train.perf.rollout_prefix import install_rollout_prefix
from coz_train.perf.vision_cache import VisionFeatureCache, install_vision_cache, uninstall_vision_cache
from coz_train.policy.load import encode_chats

log = logging.getLogger(__name__)

LOGITS_TOL = 1e-4  # float32 logits, log-probs and vision features, relative (norm) error
GRAD_TOL = 1e-3  # float32 LoRA gradients, relative (norm) error
CONTROL_MIN = 1e-3  # a negative control is off by more than this and by more than 100x the measured error
TRAIN_CHECK_ROWS = 4  # rows of group 0 in the float32 forward + backward check (they share one prompt)


@dataclass
class Device:
    device: torch.device
    dtype: torch.dtype
    peak_flops: float  # measured dense matmul FLOP/s in dtype
    bandwidth: float  # measured device-to-device copy bytes/s (read + write)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)


def measure_device(device: torch.device, dtype: torch.dtype) -> Device:
    """Matmul FLOP/s and copy bandwidth of this device, for the floors."""
    n, nbytes = (8192, 2 << 30) if device.type == "cuda" else (1536, 256 << 20)
    probe = Device(device, dtype, 0.0, 0.0)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul = timed(probe, lambda: a @ b, warmup=2, reps=5)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy = timed(probe, lambda: dst.copy_(src), warmup=2, reps=5)
    return Device(device, dtype, 2 * n**3 / matmul["s"], 2 * nbytes / copy["s"])


def timed(dev: Device, fn: Callable[[], Any], warmup: int, reps: int) -> dict:
    for _ in range(warmup):
        fn()
    dev.sync()
    if dev.is_cuda:
        torch.cuda.reset_peak_memory_stats(dev.device)
    times = []
    for _ in range(max(1, reps)):
        dev.sync()
        start = time.perf_counter()
        fn()
        dev.sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(dev.device) / 1e9 if dev.is_cuda else None
    return dict(s=statistics.median(times), times=[round(t, 4) for t in times],
                peak_GB=None if peak is None else round(peak, 2))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def control_off(control: float, err: float) -> bool:
    """A negative control is far enough off: more than 100x the measured error and more than CONTROL_MIN."""
    return control > max(100 * err, CONTROL_MIN)


def free_memory(dev: Device) -> None:
    gc.collect()
    if dev.is_cuda:
        torch.cuda.empty_cache()


def guarded_check(enabled: bool, dev: Device, fn: Callable[[], dict]) -> dict | None:
    """None when checks are off; otherwise fn's result, or {"error", "passed": False} when it raises,
    so that a check running out of memory does not cost the phase's timings."""
    if not enabled:
        return None
    free_memory(dev)
    try:
        result = fn()
    except Exception as err:
        log.error("check failed to run: %s: %s", type(err).__name__, err)
        result = {"error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc()[-3000:],
                  "passed": False}
    free_memory(dev)
    return result


def greedy_compare(plain_tokens: list[list[int]], fast_tokens: list[list[int]],
                   plain_logits: list[torch.Tensor], fast_logits: list[torch.Tensor]) -> dict:
    """Greedy decodings, plain vs fast, row by row: each step's logits up to and including the first step
    where the two paths' tokens disagree (after it the inputs differ, so the logits say nothing).
    A flip there is a near tie of the plain logits when the compared logits agree; it is reported, not
    failed. Passes when the compared logits agree within LOGITS_TOL and every row's first step was compared."""
    a_parts, b_parts, compared, flips, equal, total = [], [], [], [], 0, 0
    for ta, tb, la, lb in zip(plain_tokens, fast_tokens, plain_logits, fast_logits, strict=True):
        n = min(len(ta), len(tb), len(la), len(lb))
        first = next((i for i in range(n) if ta[i] != tb[i]), None)
        steps = n if first is None else first + 1
        if first is not None:
            flips.append(dict(step=first, plain_token=ta[first], fast_token=tb[first],
                              plain_logit_gap=float(la[first, ta[first]] - la[first, tb[first]])))
        elif len(ta) != len(tb):  # one row stopped (end of sequence) where the other did not
            flips.append(dict(step=n, plain_len=len(ta), fast_len=len(tb)))
        a_parts.append(la[:steps])
        b_parts.append(lb[:steps])
        compared.append(steps)
        equal += sum(int(x == y) for x, y in zip(ta, tb, strict=False))
        total += max(len(ta), len(tb))
    err = rel_err(torch.cat(b_parts), torch.cat(a_parts))
    return dict(logits_rel_err=err, greedy_token_agreement=equal / max(total, 1),
                tokens_identical=plain_tokens == fast_tokens,
                steps_compared=min(compared), row_steps_compared=sum(compared),
                decode_steps=max(len(t) for t in plain_tokens), first_disagreements=flips[:8],
                passed=err < LOGITS_TOL and min(compared) >= 1)


@contextlib.contextmanager
def float32(model: torch.nn.Module, dev: Device) -> Iterator[None]:
    """The model in float32 with TF32 off; every parameter and buffer back to its own dtype afterwards."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    dtypes = [t.dtype for t in tensors]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for t in tensors:
            t.data = t.data.float()
        yield
    finally:
        for t, dtype in zip(tensors, dtypes, strict=True):
            t.data = t.data.to(dtype)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def params_of(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def lm_params_of(inner: Any) -> int:
    """The language model's weights that run per token (the output head counted once when tied)."""
    return params_of(inner.model.language_model) + (
        0 if inner.config.tie_word_embeddings else inner.lm_head.weight.numel())


def decode_bytes_of(inner: Any) -> int:
    """Weight bytes one decode step reads: the language model's layers and the output head (not the embeddings)."""
    layers = sum(p.numel() * p.element_size() for n, p in inner.model.language_model.named_parameters()
                 if "embed_tokens" not in n)
    return layers + inner.lm_head.weight.numel() * inner.lm_head.weight.element_size()


class Bench:
    """Models, batch and device of one benchmark run; one method per phase."""

    def __init__(self, dev: Device, shape: Shape, processor: Any, batch: dict, policy: Any,
                 static_cache: bool = False, check: bool = True, compiled_decode: bool = False):
        self.dev, self.shape, self.processor, self.batch = dev, shape, processor, batch
        self.policy, self.static_cache, self.check = policy, static_cache, check
        self.compiled_decode = compiled_decode
        self.rollout_prefix = install_rollout_prefix(policy)
        self.rollout_prefix.enabled = False  # on inside the fast rollout only
        self.n = shape.groups * shape.generations
        self.keep = shape.new_tokens
        inner = unwrap(policy)
        self.inner = inner
        self.lm_params = lm_params_of(inner)
        self.vision_params = params_of(inner.model.visual)
        grid = batch["image_grid_thw"]
        self.unique_patches = int(grid.prod(-1).view(self.n, 2)[:: shape.generations].sum())
        self.prompt_len = batch["input_ids"].shape[1] - self.keep

    # ------------------------------------------------------------------ helpers
    def run(self, fn: Callable[[], Any]) -> dict:
        return timed(self.dev, fn, self.shape.warmup, self.shape.reps)

    def checked(self, fn: Callable[[], dict]) -> dict | None:
        return guarded_check(self.check, self.dev, fn)

    def group(self, g: int) -> dict:
        G = self.shape.generations
        return rows(self.batch, g * G, (g + 1) * G)

    def prompt_inputs(self, start: int = 0, end: int | None = None) -> dict:
        inputs = rows(self.batch, start, self.n if end is None else end)
        cut = self.prompt_len
        return dict(inputs, input_ids=inputs["input_ids"][:, :cut], attention_mask=inputs["attention_mask"][:, :cut],
                    mm_token_type_ids=inputs["mm_token_type_ids"][:, :cut])

    def plain_logps(self, inputs: dict) -> torch.Tensor:
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        labels[:, : -self.keep] = -100
        return self.policy(**inputs, labels=labels, fused_lm_head=True).log_probs[:, -self.keep:]

    def fast_logps(self, inputs: dict, **control: Any) -> torch.Tensor:
        spec = dict(logits_to_keep=self.keep, num_images=[2] * inputs["input_ids"].shape[0], **control)
        return self.policy(**inputs, **{KWARG: spec}).log_probs

    @contextlib.contextmanager
    def vision_cached(self) -> Iterator[dict]:
        """The frozen-vision feature cache on the policy, holding the step's images as the rollouts leave it
        in training (`perf.vision_cache`); removed afterwards, so the plain paths never see it. Yields a dict
        that gets the vision tower's image encodings made while the cache was on (`misses`)."""
        cache = install_vision_cache(self.policy, 4 * self.n)
        stats: dict = {}
        try:
            with torch.no_grad():
                cache(self.batch["pixel_values"], self.batch["image_grid_thw"])  # the rollouts' encodings
            filled = cache.misses
            yield stats
            stats["misses"] = cache.misses - filled
        finally:
            uninstall_vision_cache(self.policy)

    def flops_floor(self, params: int, tokens: int, passes: float = 2.0) -> float:
        return passes * params * tokens / self.dev.peak_flops

    def vision_floor(self) -> float:
        return self.flops_floor(self.vision_params, self.unique_patches)

    # ------------------------------------------------------------------ phases
    def vision(self) -> dict:
        own = self.inner.model.get_image_features
        pixels, grid = self.batch["pixel_values"], self.batch["image_grid_thw"]
        with torch.no_grad():
            plain = self.run(lambda: own(pixels, grid))
            fast = self.run(lambda: VisionFeatureCache(self.inner, grid.shape[0])(pixels, grid))
        return dict(plain=plain, fast=fast, floor_s=self.vision_floor(), check=self.checked(self.vision_check),
                    work=dict(images=int(grid.shape[0]), unique_images=2 * self.shape.groups,
                              unique_patches=self.unique_patches))

    def vision_check(self) -> dict:
        """fp32: group 0's image embeddings through the cache (each image once) vs the tower on every row's."""
        own = self.inner.model.get_image_features
        one = self.group(0)
        pixels, grid = one["pixel_values"], one["image_grid_thw"]
        with torch.no_grad(), float32(self.policy, self.dev):
            a = torch.cat(own(pixels, grid).pooler_output)
            b = torch.cat(VisionFeatureCache(self.inner, grid.shape[0])(pixels, grid).pooler_output)
        err = rel_err(b, a)
        return dict(features_rel_err=err, bit_identical=bool(torch.equal(a, b)), images=int(grid.shape[0]),
                    passed=err < LOGITS_TOL)

    def rollout(self) -> dict:
        """Sampled rollouts in train mode, as TRL generates (LoRA dropout on in the plain path; the fast path
        merges the adapters, so it has none), with TRL's `disable_compile=True`."""
        inputs = self.prompt_inputs()
        tokenizer = self.processor.tokenizer
        sample = dict(max_new_tokens=self.keep, min_new_tokens=self.keep, do_sample=True, temperature=1.0, top_p=1.0,
                      pad_token_id=tokenizer.pad_token_id, disable_compile=True)

        def plain() -> Any:
            return self.policy.generate(**inputs, **sample)

        self.policy.train()
        try:
            with torch.no_grad():
                t_plain, t_fast = self.run(plain), self.run(lambda: self.fast_generate(inputs, sample))
            tokens = self.n * self.keep
            extra = {}
            if self.static_cache:  # as TRL runs a static cache: uncompiled
                extra["fast_static"] = self.report_rollout(inputs, dict(sample, cache_implementation="static"), tokens)
            if self.compiled_decode:  # perf.compiled_decode
                config = compiled_generation_config(GenerationConfig(**sample))
                extra["fast_compiled"] = self.report_rollout(inputs, dict(generation_config=config), tokens)
                if "error" not in extra["fast_compiled"]:
                    extra["fast_compiled"]["agreement"] = self.checked(lambda: self.compiled_agreement(inputs, sample))
        finally:
            self.policy.eval()
        decode_bytes = decode_bytes_of(self.inner)
        prompt_tokens = int(self.batch["attention_mask"][:: self.shape.generations, : self.prompt_len].sum())
        floor = ((self.keep - 1) * decode_bytes / self.dev.bandwidth
                 + self.flops_floor(self.lm_params, prompt_tokens) + self.vision_floor())
        result = dict(plain=dict(t_plain, tok_per_s=tokens / t_plain["s"]), fast=dict(t_fast, tok_per_s=tokens / t_fast["s"]),
                      floor_s=floor, check=self.checked(lambda: self.rollout_check(sample)),
                      work=dict(new_tokens=tokens, decode_steps=self.keep, decode_weight_GB=decode_bytes / 1e9,
                                mode="train"))
        return dict(result, **extra)

    def fast_generate(self, inputs: dict, options: dict) -> Any:
        """The fast rollout: a fresh vision cache, each group's prompt prefilled once, adapters merged."""
        install_vision_cache(self.policy, 2 * self.n)
        self.rollout_prefix.enabled = True
        try:
            with merged_adapters(self.policy):
                return self.policy.generate(**inputs, **options)
        finally:
            self.rollout_prefix.enabled = False
            uninstall_vision_cache(self.policy)

    def rollout_check(self, sample: dict) -> dict:
        """fp32, eval mode: greedy rollouts of group 0, plain vs fast, logits compared up to the first flip."""
        one = self.prompt_inputs(0, self.shape.generations)
        greedy = dict(sample, do_sample=False, output_logits=True, return_dict_in_generate=True)
        with torch.no_grad(), float32(self.policy, self.dev):
            a, b = self.policy.generate(**one, **greedy), self.fast_generate(one, greedy)
        start = one["input_ids"].shape[1]
        rows_a, rows_b = a.sequences[:, start:].tolist(), b.sequences[:, start:].tolist()
        la, lb = torch.stack(a.logits, dim=1), torch.stack(b.logits, dim=1)  # [N, steps, vocab]
        return greedy_compare(rows_a, rows_b, list(la), list(lb))

    def report_rollout(self, inputs: dict, options: dict, tokens: int) -> dict:
        """The fast rollout with other generation options, for the report only (not in the step's phases): a
        static KV cache as TRL runs it (`grpo.generation_kwargs={cache_implementation: static}`, uncompiled: TRL
        sets `disable_compile=True`), or `perf.compiled_decode`. The first call (compilation) is timed apart."""
        compiled = "generation_config" in options and not options["generation_config"].disable_compile
        try:
            with torch.no_grad():
                start = time.perf_counter()
                self.fast_generate(inputs, options)
                self.dev.sync()
                first = time.perf_counter() - start
                timing = self.run(lambda: self.fast_generate(inputs, options))
            return dict(timing, tok_per_s=tokens / timing["s"], first_call_s=first, compiled=compiled, report_only=True)
        except Exception as err:  # a failure here must not cost the other measurements
            return {"error": f"{type(err).__name__}: {err}", "report_only": True}

    def compiled_agreement(self, inputs: dict, sample: dict) -> dict:
        """Greedy rollouts of every row in the benchmark's dtype, the fast path eager vs compiled (the timed
        shapes, so nothing compiles again): how far the compiled decode steps agree. Reported, not judged: in
        bfloat16 rounding alone moves logits by more than the float32 tolerance (the float32 equality is
        tested on the CPU: tests/perf/test_compiled_decode.py)."""
        greedy = dict(sample, do_sample=False, output_logits=True, return_dict_in_generate=True)
        compiled = dict(generation_config=compiled_generation_config(GenerationConfig(**greedy)))
        with torch.no_grad():
            a, b = self.fast_generate(inputs, greedy), self.fast_generate(inputs, compiled)
        start = inputs["input_ids"].shape[1]
        la, lb = torch.stack(a.logits, dim=1), torch.stack(b.logits, dim=1)
        found = greedy_compare(a.sequences[:, start:].tolist(), b.sequences[:, start:].tolist(), list(la), list(lb))
        return dict({k: v for k, v in found.items() if k != "passed"}, dtype=str(self.dev.dtype).removeprefix("torch."))

    def logps(self) -> dict:
        """Reference log-probs (adapters off, no gradients), one group per micro-batch; the fast path with the
        vision cache holding the step's images, as the trainer's does after the rollouts."""
        G = self.shape.groups
        with torch.no_grad(), self.policy.disable_adapter():
            plain = self.run(lambda: [self.plain_logps(self.group(g)) for g in range(G)])
            with self.vision_cached() as cached:
                fast = self.run(lambda: [self.fast_logps(self.group(g)) for g in range(G)])
        return dict(plain=self.per_token(plain), fast=self.per_token(fast),
                    floor_s=self.flops_floor(self.lm_params, self.distinct_tokens()),
                    check=self.checked(self.logps_check),
                    work=dict(self.token_work(), vision_encodings_in_fast=cached.get("misses")))

    def logps_check(self) -> dict:
        with torch.no_grad(), self.policy.disable_adapter(), float32(self.policy, self.dev):
            a, b = self.plain_logps(self.group(0)), self.fast_logps(self.group(0))
        err = rel_err(b, a)
        return dict(logp_rel_err=err, rows=self.shape.generations, passed=err < LOGITS_TOL)

    def train(self) -> dict:
        """LoRA forward + backward of a GRPO surrogate loss, one group per micro-batch; the fast path with the
        vision cache holding the step's images."""
        G = self.shape.groups
        advantages = torch.randn(self.n, generator=torch.Generator().manual_seed(1)).to(self.dev.device)
        lora = [p for p in self.policy.parameters() if p.requires_grad]

        def step(logps: Callable[[dict], torch.Tensor]) -> None:
            for p in lora:
                p.grad = None
            for g in range(G):
                adv = advantages[g * self.shape.generations:(g + 1) * self.shape.generations]
                loss = -(logps(self.group(g)) * adv[:, None]).sum() / (self.n * self.keep)
                loss.backward()

        self.policy.train()
        try:
            plain = self.run(lambda: step(self.plain_logps))
            with self.vision_cached() as cached:
                fast = self.run(lambda: step(self.fast_logps))
        finally:
            self.policy.eval()
            for p in lora:
                p.grad = None
        rows_checked = min(TRAIN_CHECK_ROWS, self.shape.generations)
        try:
            check = self.checked(lambda: self.train_check(advantages[:rows_checked], lora))
        finally:
            for p in lora:
                p.grad = None
        return dict(plain=self.per_token(plain), fast=self.per_token(fast),
                    floor_s=self.flops_floor(self.lm_params, self.distinct_tokens(), 4.0),
                    check=check, work=dict(self.token_work(), vision_encodings_in_fast=cached.get("misses")))

    def train_check(self, adv: torch.Tensor, lora: list) -> dict:
        """fp32: log-probs and LoRA gradients of the first rows of group 0 (they share the prompt, so the fast
        path still shares it), fast vs plain, and two controls that must be off."""
        inputs = rows(self.batch, 0, len(adv))

        def grads(logps: Callable[[dict], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            for p in lora:
                p.grad = None
            out = logps(inputs)
            (-(out * adv[:, None]).sum()).backward()
            return out.detach(), torch.cat([p.grad.flatten() for p in lora])

        with float32(self.policy, self.dev):
            lp, g = grads(self.plain_logps)
            lp_fast, g_fast = grads(self.fast_logps)
            lp_pos, _ = grads(lambda b: self.fast_logps(b, position_offset=1))
            _, g_detached = grads(lambda b: self.fast_logps(b, detach_cache=True))
        result = dict(logp_rel_err=rel_err(lp_fast, lp), grad_rel_err=rel_err(g_fast, g),
                      control_position_plus_one_logp_rel_err=rel_err(lp_pos, lp),
                      control_detached_cache_grad_rel_err=rel_err(g_detached, g), rows=len(adv))
        result["passed"] = (result["logp_rel_err"] < LOGITS_TOL and result["grad_rel_err"] < GRAD_TOL
                            and control_off(result["control_position_plus_one_logp_rel_err"], result["logp_rel_err"])
                            and control_off(result["control_detached_cache_grad_rel_err"], result["grad_rel_err"]))
        return result

    def per_token(self, timing: dict) -> dict:
        """tokens/s counts the rows' full sequences (the plain path's work) for both paths."""
        return dict(timing, tok_per_s=int(self.batch["attention_mask"].sum()) / timing["s"])

    def distinct_tokens(self) -> int:
        """Tokens the fast path must run: each group's prompt once, every completion."""
        G = self.shape.generations
        prompts = int(self.batch["attention_mask"][::G, : self.prompt_len].sum())
        return prompts + int(self.batch["attention_mask"][:, self.prompt_len:].sum())

    def token_work(self) -> dict:
        return dict(rows=self.n, tokens_plain=int(self.batch["attention_mask"].sum()),
                    tokens_distinct=self.distinct_tokens())


def install(policy: Any) -> None:
    """The plain path's fused log-prob head (as TRL installs it) and the group-prefix keyword."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(policy.get_base_model(), temperature=1.0, outputs=("log_probs", "entropy"))
    install_group_prefix(policy)


CRITIC_SCORING = ("logits", "generate")


def critic_phase(cfg: Any, spec: dict, processor: Any, batch: dict, dev: Device, shape: Shape,
                 scoring: str = "logits", check: bool = True) -> dict:
    """Critic scoring of every completion, one group per batch as the reward batches it, on batches encoded
    beforehand (the encoding is CPU preprocessing, which the preprocess phase counts):
    `scoring=logits` the next-token logits, `scoring=generate` greedy decoding of critic.max_new_tokens tokens.

    The critic is built here and freed afterwards, so the policy phases have the memory."""
    from omegaconf import OmegaConf

    from coz_train.bench.workload import build_model
    from coz_train.perf import critic_prefix
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

    def check_logits() -> dict:
        first = encoded[0]
        with torch.no_grad(), float32(model, dev):
            a = model(**first).logits[:, -1].float()
            b = critic_prefix.next_token_logits(model, first, groups[0], pad)
            wrong = critic_prefix.next_token_logits(model, first, groups[0], pad, position_offset=1)
        result = dict(logits_rel_err=rel_err(b, a), control_position_plus_one_rel_err=rel_err(wrong, a), rows=len(a))
        result["passed"] = (result["logits_rel_err"] < LOGITS_TOL
                            and control_off(result["control_position_plus_one_rel_err"], result["logits_rel_err"]))
        return result

    def check_generate() -> dict:
        first = encoded[0]
        with torch.no_grad(), float32(model, dev):
            a = model.generate(**first, max_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True,
                               output_logits=True)
            b = critic_prefix.generate(model, first, groups[0], new_tokens, eos_token_ids=eos, pad_token_id=pad,
                                       output_logits=True)
            wrong = critic_prefix.generate(model, first, groups[0], 1, eos_token_ids=eos, pad_token_id=pad,
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

    result_check = guarded_check(check, dev, check_logits if scoring == "logits" else check_generate)
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


def preprocess_phase(cfg: Any, processors: tuple, batch: dict, dev: Device, shape: Shape, check: bool = True) -> dict:
    """CPU preprocessing of one step, as TRL and the critic do it: the policy prompts tokenized for
    generation, again for the log-prob inputs, and the critic's conversations. `processors` holds
    four processors: policy and critic for the plain path, policy and critic for the cached one."""
    from coz_train.rewards.critic import instruction_text

    prompts, images = batch["prompts"], batch["images"]
    conversations = [[{"role": "user", "content": [*({"type": "image", "image": im} for im in row),
                                                     {"type": "text", "text": instruction_text(cfg.critic, text)}]}]
                     for row, text in zip(images, batch["completion_text"], strict=True)]

    def step(policy: Any, critic: Any) -> list:
        generation = policy.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
        text = policy.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False)
        logps = policy(images=images, text=text, padding=True, return_tensors="pt")
        critic_inputs = encode_chats(critic, conversations)  # as the critic encodes them
        return [generation, logps, critic_inputs]

    plain_policy, plain_critic, fast_policy, fast_critic = processors
    caches = [install_image_cache(fast_policy), install_image_cache(fast_critic)]

    def fast() -> list:
        image_cache._DIGESTS.clear()
        for cache in caches:  # each step meets new images: start from empty caches
            cache.clear()
        return step(fast_policy, fast_critic)

    def same() -> dict:
        equal = all(
            torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
            for a, b in zip(step(plain_policy, plain_critic), fast(), strict=True) for key in a
        )
        return dict(outputs_bit_identical=equal, passed=equal)

    t_plain = timed(dev, lambda: step(plain_policy, plain_critic), shape.warmup, shape.reps)
    t_fast = timed(dev, fast, shape.warmup, shape.reps)
    n_images = sum(len(row) for row in images)
    return dict(plain=dict(t_plain, images_per_s=3 * n_images / t_plain["s"]),
                fast=dict(t_fast, images_per_s=3 * n_images / t_fast["s"]),
                floor_s=0.0, check=guarded_check(check, dev, same),
                work=dict(calls=3, images_per_call=n_images, distinct_images=2 * shape.groups,
                          torch_threads=torch.get_num_threads()))
