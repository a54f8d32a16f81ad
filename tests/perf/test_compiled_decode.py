"""perf.compiled_decode: rollouts with a static cache and compiled decode steps sample what plain `generate` samples."""

from __future__ import annotations

import pytest
import torch

from coz_train.perf.compiled_decode import compiled_generation_config
from coz_train.perf.prefix import unwrap
from coz_train.perf.rollout_prefix import install_rollout_prefix
from coz_train.train import build_trainer


def test_the_config_asks_for_a_static_cache_and_compilation_and_leaves_the_original_alone():
    from transformers import GenerationConfig

    trl_config = GenerationConfig(max_new_tokens=8, do_sample=True, disable_compile=True)
    config = compiled_generation_config(trl_config)
    assert config.cache_implementation == "static" and not config.disable_compile
    assert config.compile_config.mode == "reduce-overhead" and config.compile_config._compile_all_devices
    assert trl_config.disable_compile and trl_config.cache_implementation is None
    with pytest.raises(ValueError, match="cache_implementation='offloaded'.*perf.compiled_decode=false"):
        compiled_generation_config(GenerationConfig(cache_implementation="offloaded"))


@pytest.fixture(scope="module")
def setup(smoke_policy_cfg):
    from policy_batch import tiny_policy

    from coz_train.bench.workload import grpo_batch

    model, processor = tiny_policy(smoke_policy_cfg)
    model.eval()
    batch = grpo_batch(processor, groups=2, per_group=3, max_completion=4,
                       image_sizes=[((112, 112), (56, 84)), ((56, 56), (56, 56))])
    cut = batch["input_ids"].shape[1] - batch["logits_to_keep"]
    inputs = dict(input_ids=batch["input_ids"][:, :cut], attention_mask=batch["attention_mask"][:, :cut],
                  pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                  mm_token_type_ids=batch["mm_token_type_ids"][:, :cut])
    return model, install_rollout_prefix(model), inputs


def generate(model, handle, inputs, config, shared: bool):
    handle.enabled = shared
    torch.manual_seed(5)
    with torch.no_grad():
        return model.generate(**inputs, generation_config=config)


@pytest.fixture
def compiled_steps(setup, monkeypatch):
    """{"steps": n}: forward calls that went through the model's compiled step (`get_compiled_call`)."""
    inner = unwrap(setup[0])
    own = inner.get_compiled_call
    seen = {"steps": 0}

    def counting(compile_config):
        compiled = own(compile_config)

        def step(*args, **kwargs):
            seen["steps"] += 1
            return compiled(*args, **kwargs)

        return step

    monkeypatch.setattr(inner, "get_compiled_call", counting)
    return seen


@pytest.mark.parametrize("shared", [False, True], ids=["own_cache", "rollout_prefix"])
def test_compiled_rollouts_sample_the_plain_tokens(setup, compiled_steps, shared):
    import torch._dynamo.utils as dynamo_utils
    from transformers import GenerationConfig

    model, handle, inputs = setup
    trl_config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, pad_token_id=0,
                                  output_logits=True, return_dict_in_generate=True, disable_compile=True)
    plain = generate(model, handle, inputs, trl_config, shared=False)
    assert compiled_steps["steps"] == 0  # TRL's own config: every step eager
    calls = handle.calls
    compiled = generate(model, handle, inputs, compiled_generation_config(trl_config), shared=shared)
    assert compiled_steps["steps"] == 5  # the prefill eager, the 5 decode steps compiled
    assert handle.calls == calls + shared
    assert torch.equal(plain.sequences, compiled.sequences)  # same logits, same random draws
    a, b = torch.stack(plain.logits), torch.stack(compiled.logits)
    assert ((a - b).abs().max() / a.abs().max()) < 1e-5
    # a second call reuses the compiled step: no new graph
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    again = generate(model, handle, inputs, compiled_generation_config(trl_config), shared=shared)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs and compiled_steps["steps"] == 10
    assert torch.equal(again.sequences, plain.sequences)


def test_a_wrong_rope_delta_in_the_compiled_steps_changes_the_rollouts(setup, compiled_steps):
    """Negative control: decode positions one too far (the rows' rope deltas + 1) and the compiled steps' logits
    move, so the comparison above would catch a compiled step that ignored the positions it is given."""
    from transformers import GenerationConfig

    model, handle, inputs = setup
    greedy = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=0, output_logits=True,
                              return_dict_in_generate=True, disable_compile=True)
    plain = generate(model, handle, inputs, greedy, shared=True)
    inner = unwrap(model)
    original = handle.original

    def shifted(**kwargs):
        inner.model.rope_deltas = inner.model.rope_deltas + 1
        return original(**kwargs)

    handle.original = shifted
    try:
        wrong = generate(model, handle, inputs, compiled_generation_config(greedy), shared=True)
    finally:
        handle.original = original
    assert compiled_steps["steps"] == 5
    a, b = plain.logits[-1], wrong.logits[-1]
    assert ((a - b).abs().max() / a.abs().max()) > 1e-3


@pytest.mark.parametrize("override, message", [
    ("grpo.use_vllm=true", r"with grpo\.use_vllm=true vLLM generates instead\. Set perf\.compiled_decode=false"),
    ("+grpo.generation_kwargs={cache_implementation: offloaded}", r"cache_implementation='offloaded'"),
])
def test_config_check_refuses_what_it_cannot_compile_before_loading(make_config, no_model_loads, override, message):
    overrides = ["+experiment=smoke", "perf=plain", "logging.wandb=false"]
    with pytest.raises(ValueError, match=message):
        build_trainer(make_config(*overrides, "perf.compiled_decode=true", override))
    with pytest.raises(no_model_loads):  # control: the same run without the switch goes on to load
        build_trainer(make_config(*overrides, override))


def test_config_check_refuses_zero3_before_loading(make_config, no_model_loads, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")  # what `accelerate launch` sets for ZeRO-3 configs
    overrides = ["+experiment=smoke", "perf=plain", "logging.wandb=false"]
    with pytest.raises(ValueError, match=r"perf\.compiled_decode does not work with DeepSpeed ZeRO-3"):
        build_trainer(make_config(*overrides, "perf.compiled_decode=true"))
    with pytest.raises(no_model_loads):
        build_trainer(make_config(*overrides))
