"""The preprocess phase: the CPU preprocessing of one step, plain processors vs with `perf.image_cache`.

It has no device floor (`floor_s` is 0): it is CPU work, timed on however many threads torch has.
"""

from __future__ import annotations

from typing import Any

import torch

from coz_train.bench.phases.checks import guarded_check
from coz_train.bench.phases.timing import Device, timed
from coz_train.bench.workload import Shape
from coz_train.perf import image_cache
from coz_train.perf.image_cache import install_image_cache
from coz_train.policy.load import encode_chats


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
