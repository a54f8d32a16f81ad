"""perf.rollout_prefix: rollouts from a once-per-group prefill sample exactly what plain `generate` samples."""

from __future__ import annotations

import pytest
import torch

from coz_train.perf.rollout_prefix import STATIC_BUCKET, install_rollout_prefix

SIZES = [((112, 112), (56, 84)), ((56, 56), (56, 56))]  # two groups, different prompt lengths (left padding)


def prompt_inputs(batch):
    cut = batch["input_ids"].shape[1] - batch["logits_to_keep"]
    return dict(input_ids=batch["input_ids"][:, :cut], attention_mask=batch["attention_mask"][:, :cut],
                pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                mm_token_type_ids=batch["mm_token_type_ids"][:, :cut])


def rollouts(model, handle, inputs, enabled, seed=3, **options):
    handle.enabled = enabled
    torch.manual_seed(seed)
    options = {"max_new_tokens": 8, **options}
    with torch.no_grad():
        return model.generate(**inputs, output_logits=True, return_dict_in_generate=True, pad_token_id=0, **options)


@pytest.fixture(scope="module")
def setup(smoke_policy_cfg):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from policy_batch import tiny_policy

    from coz_train.bench.workload import grpo_batch

    model, processor = tiny_policy(smoke_policy_cfg)
    model.eval()
    batch = grpo_batch(processor, groups=2, per_group=3, max_completion=4, image_sizes=SIZES)
    return model, install_rollout_prefix(model), prompt_inputs(batch)


@pytest.mark.parametrize("cache", [None, "static"])
@pytest.mark.parametrize("sample", [False, True])
def test_same_rollouts_as_plain_generate(setup, sample, cache):
    """Plain = transformers' own dynamic cache; the shared prefill, with a dynamic or a static cache."""
    model, handle, inputs = setup
    before = handle.calls
    plain = rollouts(model, handle, inputs, enabled=False, do_sample=sample)
    shared = rollouts(model, handle, inputs, enabled=True, do_sample=sample, cache_implementation=cache)
    assert handle.calls == before + 1
    assert torch.equal(plain.sequences, shared.sequences)  # same logits, same random draws
    a, b = torch.stack(plain.logits), torch.stack(shared.logits)
    assert ((a - b).abs().max() / a.abs().max()) < 1e-5


@pytest.mark.parametrize("cache", [None, "static"])
def test_a_wrong_rope_delta_changes_the_rollouts(setup, monkeypatch, cache):
    """Negative control: continue one position too far and the first generated step's logits move."""
    model, handle, inputs = setup
    import coz_train.perf.rollout_prefix as module

    plain = rollouts(model, handle, inputs, enabled=False, do_sample=False)
    original = module.run_prefix

    def shifted(*args, **kwargs):
        return original(*args, **kwargs, position_offset=1)

    monkeypatch.setattr(module, "run_prefix", shifted)
    wrong = rollouts(model, handle, inputs, enabled=True, do_sample=False, cache_implementation=cache)
    a, b = plain.logits[0], wrong.logits[0]
    assert ((a - b).abs().max() / a.abs().max()) > 1e-3


def test_the_static_cache_is_kept_across_calls_and_rebuilt_for_another_batch(setup):
    model, handle, inputs = setup
    rollouts(model, handle, inputs, enabled=True, do_sample=False, cache_implementation="static")
    kept = handle.static_cache
    assert kept.layers[0].max_cache_len % STATIC_BUCKET == 0
    assert kept.layers[0].max_cache_len >= inputs["input_ids"].shape[1] + 7
    rollouts(model, handle, inputs, enabled=True, do_sample=False, cache_implementation="static")
    assert handle.static_cache is kept  # fixed storage: compiled decode steps are reused
    # a shorter generation reuses the longer cache: the positions past it are masked out
    plain = rollouts(model, handle, inputs, enabled=False, do_sample=False, max_new_tokens=3)
    short = rollouts(model, handle, inputs, enabled=True, do_sample=False, max_new_tokens=3,
                     cache_implementation="static")
    assert handle.static_cache is kept and torch.equal(plain.sequences, short.sequences)
    a, b = torch.stack(plain.logits), torch.stack(short.logits)
    assert ((a - b).abs().max() / a.abs().max()) < 1e-5
    fewer = {k: v[:3] if k != "pixel_values" else v[: int(inputs["image_grid_thw"][:6].prod(-1).sum())]
             for k, v in inputs.items()}
    fewer["image_grid_thw"] = inputs["image_grid_thw"][:6]
    plain = rollouts(model, handle, fewer, enabled=False, do_sample=False)
    shared = rollouts(model, handle, fewer, enabled=True, do_sample=False, cache_implementation="static")
    assert handle.static_cache is not kept and handle.static_cache.layers[0].batch_size == 3
    assert torch.equal(plain.sequences, shared.sequences)


@pytest.mark.parametrize("options", [dict(num_return_sequences=2, do_sample=True)])
def test_steps_aside_for_calls_it_does_not_cover(setup, options):
    model, handle, inputs = setup
    before = handle.calls
    rollouts(model, handle, inputs, enabled=True, **options)
    assert handle.calls == before


def test_other_cache_implementations_are_not_covered(setup):
    from transformers import GenerationConfig

    _, handle, inputs = setup
    assert handle.covers(dict(inputs, cache_implementation="static", max_new_tokens=4))
    assert not handle.covers(dict(inputs, cache_implementation="offloaded", max_new_tokens=4))
    config = GenerationConfig(cache_implementation="offloaded", max_new_tokens=4)
    assert not handle.covers(dict(inputs, generation_config=config))
    assert handle.covers(dict(inputs, generation_config=config, cache_implementation="static"))  # the call's own wins


def test_options_resolve_as_generate_resolves_them_with_the_models_own_config(setup, monkeypatch):
    """A given config's unset options come from the model's generation config, as in `generate`."""
    from transformers import GenerationConfig

    model, handle, inputs = setup
    own = handle.inner.generation_config
    monkeypatch.setattr(own, "num_return_sequences", 2)
    assert not handle.covers(dict(inputs, generation_config=GenerationConfig(max_new_tokens=4)))
    assert handle.covers(dict(inputs, generation_config=GenerationConfig(max_new_tokens=4, num_return_sequences=1)))
    monkeypatch.setattr(own, "num_return_sequences", 1)
    # a static cache asked for by the model's own config: the shared prefill goes into a static cache
    plain = rollouts(model, handle, inputs, enabled=False, do_sample=False)
    monkeypatch.setattr(own, "cache_implementation", "static")
    before = handle.calls
    shared = rollouts(model, handle, inputs, enabled=True, do_sample=False, generation_config=GenerationConfig())
    assert handle.calls == before + 1 and own.cache_implementation == "static"  # restored after the call
    assert torch.equal(plain.sequences, shared.sequences)


def test_text_only_calls_go_to_plain_generate(setup):
    model, handle, inputs = setup
    before = handle.calls
    rollouts(model, handle, dict(input_ids=inputs["input_ids"][:, -5:], attention_mask=inputs["attention_mask"][:, -5:]),
             enabled=True, do_sample=False)
    assert handle.calls == before
    assert install_rollout_prefix(model) is handle  # installed once
