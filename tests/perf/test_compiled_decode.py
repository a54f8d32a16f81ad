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
    from policy_batch import permute_rows, tiny_policy

    from coz_train.bench.workload import grpo_batch

    model, processor = tiny_policy(smoke_policy_cfg)
    model.eval()
    batch = grpo_batch(processor, groups=2, per_group=3, max_completion=4,
                       image_sizes=[((112, 112), (56, 84)), ((56, 56), (56, 56))])
    return model, install_rollout_prefix(model), prompts(batch), prompts(permute_rows(batch, [3, 4, 5, 0, 1, 2]))


def prompts(batch):
    cut = batch["input_ids"].shape[1] - batch["logits_to_keep"]
    return dict(input_ids=batch["input_ids"][:, :cut], attention_mask=batch["attention_mask"][:, :cut],
                pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                mm_token_type_ids=batch["mm_token_type_ids"][:, :cut])


def generate(model, handle, inputs, config, shared: bool):
    handle.enabled = shared
    torch.manual_seed(5)
    with torch.no_grad():
        return model.generate(**inputs, generation_config=config)


@pytest.fixture
def compiled_steps(setup, monkeypatch):
    """{"steps": n, "shift": 0}: forward calls that went through the model's compiled step (`get_compiled_call`);
    a non-zero "shift" moves the positions those calls get (a negative control)."""
    inner = unwrap(setup[0])
    own = inner.get_compiled_call
    seen = {"steps": 0, "shift": 0}

    def counting(compile_config):
        compiled = own(compile_config)

        def step(*args, **kwargs):
            seen["steps"] += 1
            if seen["shift"]:
                kwargs["position_ids"] = kwargs["position_ids"] + seen["shift"]
            return compiled(*args, **kwargs)

        return step

    monkeypatch.setattr(inner, "get_compiled_call", counting)
    return seen


@pytest.mark.parametrize("shared", [False, True], ids=["own_cache", "rollout_prefix"])
def test_compiled_rollouts_sample_the_plain_tokens(setup, compiled_steps, shared):
    import torch._dynamo.utils as dynamo_utils
    from transformers import GenerationConfig

    model, handle, inputs, swapped = setup
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
    # the groups swapped (same shapes, other rows' positions and images): the compiled step is reused, no new
    # graph, and it follows the new inputs rather than the first call's values
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    again = generate(model, handle, swapped, compiled_generation_config(trl_config), shared=shared)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs and compiled_steps["steps"] == 10
    plain_swapped = generate(model, handle, swapped, trl_config, shared=False)
    assert torch.equal(again.sequences, plain_swapped.sequences)
    assert not torch.equal(plain_swapped.sequences, plain.sequences)  # the swap does change the rollouts


def test_wrong_positions_in_the_compiled_steps_change_the_rollouts(setup, compiled_steps):
    """Negative control: the compiled decode steps given positions one too far (the eager prefill untouched) move
    the logits, so the comparisons above would catch a compiled step that misplaced its tokens."""
    from transformers import GenerationConfig

    model, handle, inputs, _ = setup
    greedy = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=0, output_logits=True,
                              return_dict_in_generate=True, disable_compile=True)
    plain = generate(model, handle, inputs, greedy, shared=True)
    compiled_steps["shift"] = 1
    wrong = generate(model, handle, inputs, compiled_generation_config(greedy), shared=True)
    assert compiled_steps["steps"] == 5
    first = ((plain.logits[0] - wrong.logits[0]).abs().max() / plain.logits[0].abs().max())
    assert first < 1e-5  # the prefill's step is eager and unshifted
    a, b = plain.logits[1], wrong.logits[1]  # the first compiled step
    assert ((a - b).abs().max() / a.abs().max()) > 1e-3


@pytest.mark.parametrize("override, message", [
    ("grpo.use_vllm=true", r"with grpo\.use_vllm=true vLLM generates instead\. Set perf\.compiled_decode=false"),
    ("+grpo.generation_kwargs={cache_implementation: offloaded}", r"cache_implementation='offloaded'"),
    ("grpo.cache_implementation=offloaded", r"cache_implementation='offloaded' \(grpo\.cache_implementation"),
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
