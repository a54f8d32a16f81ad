"""The phases of one GRPO step, each run the plain way (as TRL + PEFT do) and with the perf switches.

Every phase returns {"plain": timing, "fast": timing, "floor_s": ..., "work": ..., "check": ...}.
Timings are medians over `reps` runs after `warmup` runs, with the device synchronised; `peak_GB`
is the device's peak allocated memory during the runs (GPU only). Checks compare the fast path with
the plain one in float32 (the model is converted for the check and back, which is exact for
bfloat16 weights), with negative controls that must fail.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from coz_train.bench.workload import Shape, rows
from coz_train.perf import image_cache
from coz_train.perf.group_prefix import KWARG, install_group_prefix
from coz_train.perf.image_cache import install_image_cache
from coz_train.perf.merge import merged_adapters
from coz_train.perf.prefix import unwrap
from coz_train.perf.rollout_prefix import install_rollout_prefix
from coz_train.perf.vision_cache import VisionFeatureCache, install_vision_cache, uninstall_vision_cache


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


@contextlib.contextmanager
def float32(model: torch.nn.Module, dev: Device) -> Iterator[None]:
    """The model in float32 with TF32 off; every parameter and buffer back to its own dtype afterwards."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    dtypes = [t.dtype for t in tensors]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for t in tensors:
        t.data = t.data.float()
    try:
        yield
    finally:
        for t, dtype in zip(tensors, dtypes, strict=True):
            t.data = t.data.to(dtype)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def params_of(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


class Bench:
    """Models, batch and device of one benchmark run; one method per phase."""

    def __init__(self, dev: Device, shape: Shape, processor: Any, batch: dict, policy: Any, static_cache: bool = False):
        self.dev, self.shape, self.processor, self.batch = dev, shape, processor, batch
        self.policy, self.static_cache = policy, static_cache
        self.rollout_prefix = install_rollout_prefix(policy)
        self.rollout_prefix.enabled = False  # on inside the fast rollout only
        self.n = shape.groups * shape.generations
        self.keep = shape.new_tokens
        inner = unwrap(policy)
        self.inner = inner
        self.lm_params = params_of(inner.model.language_model) + (
            0 if inner.config.tie_word_embeddings else inner.lm_head.weight.numel())
        self.vision_params = params_of(inner.model.visual)
        grid = batch["image_grid_thw"]
        self.unique_patches = int(grid.prod(-1).view(self.n, 2)[:: shape.generations].sum())
        self.prompt_len = batch["input_ids"].shape[1] - self.keep

    # ------------------------------------------------------------------ helpers
    def run(self, fn: Callable[[], Any]) -> dict:
        return timed(self.dev, fn, self.shape.warmup, self.shape.reps)

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
            check = None
            with float32(self.policy, self.dev):
                a = torch.cat(own(pixels, grid).pooler_output)
                b = torch.cat(VisionFeatureCache(self.inner, grid.shape[0])(pixels, grid).pooler_output)
                check = dict(features_rel_err=rel_err(b, a), bit_identical=bool(torch.equal(a, b)))
            check["passed"] = check["features_rel_err"] < 1e-5
        return dict(plain=plain, fast=fast, floor_s=self.vision_floor(), check=check,
                    work=dict(images=int(grid.shape[0]), unique_images=2 * self.shape.groups,
                              unique_patches=self.unique_patches))

    def rollout(self) -> dict:
        inputs = self.prompt_inputs()
        tokenizer = self.processor.tokenizer
        sample = dict(max_new_tokens=self.keep, min_new_tokens=self.keep, do_sample=True, temperature=1.0, top_p=1.0,
                      pad_token_id=tokenizer.pad_token_id)

        def plain() -> Any:
            return self.policy.generate(**inputs, **sample)

        def fast(inputs: dict = inputs, options: dict = sample) -> Any:
            install_vision_cache(self.policy, 2 * self.n)
            self.rollout_prefix.enabled = True
            try:
                with merged_adapters(self.policy):
                    return self.policy.generate(**inputs, **options)
            finally:
                self.rollout_prefix.enabled = False
                uninstall_vision_cache(self.policy)

        with torch.no_grad():
            t_plain, t_fast = self.run(plain), self.run(fast)
            one = self.prompt_inputs(0, 2 * self.shape.generations if self.shape.groups > 1 else self.shape.generations)
            greedy = dict(sample, do_sample=False, output_logits=True, return_dict_in_generate=True)
            with float32(self.policy, self.dev):
                # the check: greedy rollouts of two groups, every step's logits, plain vs fast
                a, b = self.policy.generate(**one, **greedy), fast(one, greedy)
        agree = float((a.sequences == b.sequences).float().mean())
        a, b = torch.stack(a.logits), torch.stack(b.logits)
        err = rel_err(b, a)
        decode_bytes = sum(p.numel() * p.element_size() for n, p in self.inner.named_parameters()
                           if "language_model" in n and "embed_tokens" not in n) + self.inner.lm_head.weight.numel() * \
            self.inner.lm_head.weight.element_size()
        prompt_tokens = int(self.batch["attention_mask"][:: self.shape.generations, : self.prompt_len].sum())
        floor = ((self.keep - 1) * decode_bytes / self.dev.bandwidth
                 + self.flops_floor(self.lm_params, prompt_tokens) + self.vision_floor())
        tokens = self.n * self.keep
        result = dict(plain=dict(t_plain, tok_per_s=tokens / t_plain["s"]), fast=dict(t_fast, tok_per_s=tokens / t_fast["s"]),
                      floor_s=floor, check=dict(logits_rel_err=err, greedy_token_agreement=agree,
                                                passed=err < 1e-5 and agree == 1.0),
                      work=dict(new_tokens=tokens, decode_steps=self.keep, decode_weight_GB=decode_bytes / 1e9))
        if self.static_cache:
            result["fast_static"] = self.static_rollout(fast, inputs, sample, tokens)
        return result

    def static_rollout(self, fast: Callable[..., Any], inputs: dict, sample: dict, tokens: int) -> dict:
        """The fast rollout with a static KV cache (`grpo.generation_kwargs={cache_implementation: static}`);
        on a GPU, transformers compiles the decode step (CUDA graphs). The first call pays the compilation."""
        static = dict(sample, cache_implementation="static")
        try:
            with torch.no_grad():
                start = time.perf_counter()
                fast(inputs, static)
                self.dev.sync()
                first = time.perf_counter() - start
                timing = self.run(lambda: fast(inputs, static))
            return dict(timing, tok_per_s=tokens / timing["s"], first_call_s=first)
        except Exception as err:  # compilation trouble must not cost the other measurements
            return {"error": f"{type(err).__name__}: {err}"}

    def logps(self) -> dict:
        """Reference log-probs (adapters off, no gradients), one group per micro-batch."""
        G = self.shape.groups
        with torch.no_grad(), self.policy.disable_adapter():
            plain = self.run(lambda: [self.plain_logps(self.group(g)) for g in range(G)])
            fast = self.run(lambda: [self.fast_logps(self.group(g)) for g in range(G)])
            with float32(self.policy, self.dev):
                a, b = self.plain_logps(self.group(0)), self.fast_logps(self.group(0))
        err = rel_err(b, a)
        return dict(plain=self.per_token(plain), fast=self.per_token(fast),
                    floor_s=self.flops_floor(self.lm_params, self.distinct_tokens()),
                    check=dict(logp_rel_err=err, passed=err < 1e-5), work=self.token_work())

    def train(self) -> dict:
        """LoRA forward + backward of a GRPO surrogate loss, one group per micro-batch."""
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
        plain = self.run(lambda: step(self.plain_logps))
        fast = self.run(lambda: step(self.fast_logps))
        self.policy.eval()
        check = self.train_check(advantages[: self.shape.generations], lora)
        for p in lora:
            p.grad = None
        return dict(plain=self.per_token(plain), fast=self.per_token(fast),
                    floor_s=self.flops_floor(self.lm_params, self.distinct_tokens(), 4.0),
                    check=check, work=self.token_work())

    def train_check(self, adv: torch.Tensor, lora: list) -> dict:
        """fp32: log-probs and LoRA gradients of one group, fast vs plain, and two controls that must be off."""

        def grads(logps: Callable[[dict], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            for p in lora:
                p.grad = None
            out = logps(self.group(0))
            (-(out * adv[:, None]).sum()).backward()
            return out.detach(), torch.cat([p.grad.flatten() for p in lora])

        with float32(self.policy, self.dev):
            lp, g = grads(self.plain_logps)
            lp_fast, g_fast = grads(self.fast_logps)
            lp_pos, _ = grads(lambda b: self.fast_logps(b, position_offset=1))
            _, g_detached = grads(lambda b: self.fast_logps(b, detach_cache=True))
        result = dict(logp_rel_err=rel_err(lp_fast, lp), grad_rel_err=rel_err(g_fast, g),
                      control_position_plus_one_logp_rel_err=rel_err(lp_pos, lp),
                      control_detached_cache_grad_rel_err=rel_err(g_detached, g))
        result["passed"] = (result["logp_rel_err"] < 1e-5 and result["grad_rel_err"] < 1e-4
                            and result["control_position_plus_one_logp_rel_err"] > 100 * result["logp_rel_err"]
                            and result["control_detached_cache_grad_rel_err"] > 100 * result["grad_rel_err"])
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


def critic_phase(cfg: Any, spec: dict, processor: Any, batch: dict, dev: Device, shape: Shape) -> dict:
    """Critic scoring of every completion (next-token logits), one group per batch as the reward batches it.

    The critic is built here and freed afterwards, so the policy phases have the memory."""
    from omegaconf import OmegaConf

    from coz_train.bench.workload import build_model
    from coz_train.perf import critic_prefix
    from coz_train.rewards.critic import HFCritic

    model = build_model(spec, processor.tokenizer, dev.device, dev.dtype, cfg.seed + 7)
    # next_token_logits is the forward both scoring modes start with; "generate" skips the score-token check
    critic_cfg = OmegaConf.merge(cfg.critic, {"scoring": "generate"})
    plain = HFCritic.from_parts(critic_cfg, dev.device, processor, model)
    fast = HFCritic.from_parts(critic_cfg, dev.device, processor, model, shared_prefix=True)
    G = shape.generations
    conversations = [plain.conversation(images, text)
                     for images, text in zip(batch["images"], batch["completion_text"], strict=True)]
    groups = [conversations[g * G:(g + 1) * G] for g in range(shape.groups)]

    def run(critic: HFCritic) -> Callable[[], Any]:
        return lambda: [critic.next_token_logits(group) for group in groups]

    encoded = [plain.encode(group) for group in groups]
    with torch.no_grad():
        t_plain = timed(dev, run(plain), shape.warmup, shape.reps)
        t_fast = timed(dev, run(fast), shape.warmup, shape.reps)
        t_encode = timed(dev, lambda: [plain.encode(group) for group in groups], 0, shape.reps)
        with float32(model, dev):
            first = plain.encode(groups[0])
            a = model(**first).logits[:, -1].float()
            b = critic_prefix.next_token_logits(model, first, groups[0], processor.tokenizer.pad_token_id)
            wrong = critic_prefix.next_token_logits(model, first, groups[0], processor.tokenizer.pad_token_id,
                                                    position_offset=1)
    inner = unwrap(model)
    lm = params_of(inner.model.language_model) + (0 if inner.config.tie_word_embeddings else inner.lm_head.weight.numel())
    tokens = sum(int(e["attention_mask"].sum()) for e in encoded)
    plans = [critic_prefix.plan_groups(group, *_rows(e)) for group, e in zip(groups, encoded, strict=True)]
    distinct = sum(int(e["attention_mask"].sum()) - sum(length * (len(m) - 1) for m, length in plan)
                   for e, plan in zip(encoded, plans, strict=True))
    patches = int(batch["image_grid_thw"].prod(-1).view(-1, 2)[::G].sum())
    floor = (2 * lm * distinct + 2 * params_of(inner.model.visual) * patches) / dev.peak_flops
    check = dict(logits_rel_err=rel_err(b, a), control_position_plus_one_rel_err=rel_err(wrong, a))
    check["passed"] = check["logits_rel_err"] < 1e-5 and check["control_position_plus_one_rel_err"] > 100 * check["logits_rel_err"]
    return dict(plain=dict(t_plain, tok_per_s=tokens / t_plain["s"]), fast=dict(t_fast, tok_per_s=tokens / t_fast["s"]),
                floor_s=floor, check=check,
                work=dict(rows=len(conversations), tokens_plain=tokens, tokens_distinct=distinct,
                          encode_s_in_both=t_encode["s"]))


def _rows(encoded: Any) -> tuple[list, list]:
    """Unpadded token ids and modality types per row of an encoded critic batch."""
    mask = encoded["attention_mask"].bool()
    ids, mm = encoded["input_ids"], encoded["mm_token_type_ids"]
    return [ids[r][mask[r]] for r in range(ids.shape[0])], [mm[r][mask[r]] for r in range(ids.shape[0])]


def preprocess_phase(cfg: Any, processors: tuple, batch: dict, dev: Device, shape: Shape) -> dict:
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
        critic_inputs = critic.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt", padding=True)
        return [generation, logps, critic_inputs]

    plain_policy, plain_critic, fast_policy, fast_critic = processors
    caches = [install_image_cache(fast_policy), install_image_cache(fast_critic)]

    def fast() -> list:
        image_cache._DIGESTS.clear()
        for cache in caches:  # each step meets new images: start from empty caches
            cache.clear()
        return step(fast_policy, fast_critic)

    t_plain = timed(dev, lambda: step(plain_policy, plain_critic), shape.warmup, shape.reps)
    t_fast = timed(dev, fast, shape.warmup, shape.reps)
    same = all(
        torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
        for a, b in zip(step(plain_policy, plain_critic), fast(), strict=True) for key in a
    )
    n_images = sum(len(row) for row in images)
    return dict(plain=dict(t_plain, images_per_s=3 * n_images / t_plain["s"]),
                fast=dict(t_fast, images_per_s=3 * n_images / t_fast["s"]),
                floor_s=0.0, check=dict(outputs_bit_identical=same, passed=same),
                work=dict(calls=3, images_per_call=n_images, distinct_images=2 * shape.groups,
                          torch_threads=torch.get_num_threads()))
