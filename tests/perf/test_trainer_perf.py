"""The perf switches in the trainer: group shuffle, merged-adapter rollouts, a whole run equal to perf=plain."""

import json

import pytest
import torch
import trl.trainer.grpo_trainer as trl_grpo
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from trl.trainer.utils import shuffle_sequence_dict

import coz_train.train as train_module
from coz_train.perf import group_prefix, merge, trl_seams
from coz_train.perf.group_batches import group_runs, group_shuffle
from coz_train.perf.image_cache import CachedImageProcessor
from coz_train.perf.merge import merged_adapters
from coz_train.perf.prefix import unwrap
from coz_train.train import build_trainer, train

INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
GROUPS, G = 4, 3


def generation_batch() -> dict:
    """A generation batch as TRL shuffles it (pixel values already split per row), 4 groups of 3 rows.

    Groups 0 and 1 have the same prompt tokens and other pixels (the zoom data's case); group 3 repeats
    group 0's prompt and pixels, not next to it.
    """
    generator = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, 100, (7,), generator=generator) for _ in range(2)]
    pixels = [torch.randn(8, 6, generator=generator) for _ in range(3)]
    group_tokens, group_pixels = [0, 0, 1, 0], [0, 1, 2, 0]
    rows = GROUPS * G
    return {
        "prompt_ids": torch.stack([tokens[group_tokens[r // G]] for r in range(rows)]),
        "prompt_mask": torch.ones(rows, 7, dtype=torch.long),
        "completion_ids": torch.randint(0, 100, (rows, 5), generator=generator),
        "advantages": torch.randn(rows, generator=generator),
        "old_per_token_logps": None,
        "pixel_values": [pixels[group_pixels[r // G]].clone() for r in range(rows)],
        "image_grid_thw": [torch.tensor([[1, 2, 4]]) for _ in range(rows)],
        "num_images": [1] * rows,
        "num_items_in_batch": torch.tensor(40),
        "row": torch.arange(rows),
    }


def group_order(rows: list[int]) -> list[int] | None:
    """The groups in the order they appear, or None when some group's rows are not together and in order."""
    chunks = [rows[i : i + G] for i in range(0, len(rows), G)]
    if any(chunk != list(range(chunk[0], chunk[0] + G)) or chunk[0] % G for chunk in chunks):
        return None
    return [chunk[0] // G for chunk in chunks]


def test_group_shuffle_keeps_groups_together_and_draws_like_trl():
    batch = generation_batch()
    assert group_runs(batch["prompt_ids"], batch["pixel_values"]) == [list(range(g * G, g * G + G)) for g in range(GROUPS)]
    orders, trl_orders = set(), set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = group_shuffle(batch)
        after_ours = torch.get_rng_state()
        drawn_ours = torch.rand(1)
        torch.manual_seed(seed)
        trl_out = shuffle_sequence_dict(batch)
        assert torch.equal(torch.get_rng_state(), after_ours)
        assert torch.equal(torch.rand(1), drawn_ours)

        rows = out["row"].tolist()
        order = group_order(rows)
        assert order is not None and sorted(order) == list(range(GROUPS)), rows
        orders.add(tuple(order))
        trl_orders.add(tuple(group_order(trl_out["row"].tolist()) or ()))
        # every field moved with its row
        for key in ("prompt_ids", "prompt_mask", "completion_ids", "advantages"):
            assert torch.equal(out[key], batch[key][rows])
        for key in ("pixel_values", "image_grid_thw"):
            assert all(torch.equal(out[key][i], batch[key][r]) for i, r in enumerate(rows))
        assert out["num_images"] == [batch["num_images"][r] for r in rows]
        assert out["old_per_token_logps"] is None and out["num_items_in_batch"] is batch["num_items_in_batch"]
    assert len(orders) > 1 and any(order.index(1) != order.index(0) + 1 for order in orders)  # 0 and 1 apart
    assert trl_orders == {()}  # control: TRL's row shuffle splits groups


@pytest.fixture
def lora_layers():
    def layers(model) -> list:
        return [m for m in model.modules() if isinstance(m, LoraLayer)]

    return layers


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def test_merged_adapters_give_the_same_model_and_restore_the_weights_bit_for_bit(make_policy, make_batch,
                                                                                   lora_layers):
    model, processor = make_policy()
    model.eval()
    with torch.no_grad():  # an update of a trained adapter's size (the fixture's random B is larger)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.1)
    batch = make_batch(processor, groups=2, per_group=1, image_sizes=[((112, 112), (56, 84)), ((56, 56), (56, 56))])
    inputs = {k: batch[k] for k in INPUT_KEYS}
    cut = batch["input_ids"].shape[1] - batch["logits_to_keep"]
    prompt = dict(inputs, input_ids=inputs["input_ids"][:, :cut], attention_mask=inputs["attention_mask"][:, :cut],
                  mm_token_type_ids=inputs["mm_token_type_ids"][:, :cut])
    before = base_weights(model)
    with torch.no_grad():
        expected = model(**inputs).logits
        expected_tokens = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        with model.disable_adapter():
            base = model(**inputs).logits
        assert (base - expected).abs().max() > 1e-2  # the LoRA does change the model

        with merged_adapters(model):
            assert all(layer.merged for layer in lora_layers(model))
            changed = [n for n, p in model.named_parameters() if "lora_" not in n and not torch.equal(p, before[n])]
            assert len(changed) == len(lora_layers(model))  # every adapted base weight holds the merged update
            merged = model(**inputs).logits
            merged_tokens = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        after = model(**inputs).logits
    assert (merged - expected).abs().max() / expected.abs().max() < 1e-5
    assert torch.equal(merged_tokens, expected_tokens)
    assert not any(layer.merged for layer in lora_layers(model))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_" not in n)
    assert torch.equal(after, expected)


def test_merged_adapters_restore_bf16_weights_where_peft_unmerge_does_not(make_policy, lora_layers):
    model, _ = make_policy()
    model.to(torch.bfloat16)
    before = base_weights(model)

    def unchanged() -> bool:
        return all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_" not in n)

    with merged_adapters(model):
        assert not unchanged()
    assert unchanged() and not any(layer.merged for layer in lora_layers(model))

    with pytest.raises(RuntimeError, match="inside"), merged_adapters(model):  # also when the block fails
        raise RuntimeError("inside")
    assert unchanged() and not any(layer.merged for layer in lora_layers(model))

    # control: PEFT's own merge + unmerge subtracts the update again, which bf16 rounding does not undo
    model.merge_adapter()
    model.unmerge_adapter()
    assert not unchanged()


@pytest.fixture
def switch_calls(monkeypatch):
    """Counts of the perf code paths a run goes through, and the trainer that train() built."""
    calls = {"run": 0, "group_shuffle": 0, "merged_adapters": 0, "trainers": [], "fast_paths": [],
             "generation_configs": [], "changes": {}}

    def counting(module, name):
        original = getattr(module, name)

        def spy(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    counting(group_prefix.SharedPrompt, "run")  # a full-sequence pass that shared prompts
    counting(trl_seams, "group_shuffle")
    counting(merge, "merged_adapters")

    def keep_trainer(cfg, *args):
        trainer, resume = build_trainer(cfg, *args)
        calls["trainers"].append(trainer)
        calls["fast_paths"].append(trainer.fast_path)
        calls["changes"][id(trainer.fast_path)] = list(trainer.fast_path.changes)  # remove() empties the list
        calls["generation_configs"].append(trainer.generation_config)  # the one the run generated with
        return trainer, resume

    monkeypatch.setattr(train_module, "build_trainer", keep_trainer)
    return calls


def reward_logs(run_dir) -> list[dict]:
    lines = (run_dir / "log_history.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    return [{k: v for k, v in e.items() if k.startswith("reward")} for e in entries if "reward" in e]


SHORT_RUN = ["+experiment=smoke", "policy.lora.lora_dropout=0", "grpo.max_steps=3", "logging.wandb=false"]
FAST = ["perf=fast", "perf.critic_prefix=false"]


def trained_adapter(compose_cfg, run_dir, *overrides: str) -> dict[str, torch.Tensor]:
    adapter_dir = train(compose_cfg([*SHORT_RUN, *overrides], run_dir))
    assert adapter_dir == run_dir / "adapter"
    return load_file(adapter_dir / "adapter_model.safetensors")


def test_fast_training_run_gives_the_plain_result(compose_cfg, tmp_path, switch_calls):
    runs = {"plain": ["perf=plain"], "fast": FAST, "compiled": [*FAST, "perf.compiled_decode=true"]}
    adapters, rewards, counts = {}, {}, {}
    for name, overrides in runs.items():
        adapters[name] = trained_adapter(compose_cfg, tmp_path / name, *overrides)
        rewards[name] = reward_logs(tmp_path / name)
        counts[name] = {k: v for k, v in switch_calls.items() if isinstance(v, int)}
        for key in counts[name]:
            switch_calls[key] = 0
    plain_trainer, fast_trainer, compiled_trainer = switch_calls["trainers"]
    plain_path, fast_path, compiled_path = switch_calls["fast_paths"]
    plain_generation, fast_generation, compiled_generation = switch_calls["generation_configs"]

    # the fast run did take the fast paths, the plain run none of them
    assert counts["plain"] == {"run": 0, "group_shuffle": 0, "merged_adapters": 0}
    assert all(v > 0 for v in counts["fast"].values()), counts["fast"]
    assert plain_path.vision_caches == [] and fast_path.vision_caches[0].hits > 0
    assert plain_path.image_cache is None and fast_path.image_cache.hits > 0
    assert plain_path.rollout_prefix is None and fast_path.rollout_prefix.calls == 3  # one per step
    # load_once: the generation batch's distinct rows read once per step, not once per micro-batch and copy
    rows_once = next(c.value for c in switch_calls["changes"][id(fast_path)] if c.name == "train_dataset")
    # 3 steps and the one accelerate reads ahead: 2 prompts each, each asked for 4 times (its G copies)
    assert rows_once.reads == 4 * 2 and rows_once.requests == 4 * 8
    # pixel handles: the vision cache read the image cache's pixels (remove() has unset it since)
    assert fast_path.image_cache.handles and any(c.name == "pixel_source" and c.value is fast_path.image_cache
                                                 for c in switch_calls["changes"][id(fast_path)])

    # compiled decode: the policy's generate turned TRL's generation config (compilation off, left alone) into a
    # static-cache, compiled one
    assert plain_generation.disable_compile and fast_generation.disable_compile and compiled_generation.disable_compile
    source, compiled = unwrap(compiled_trainer.model).compiled_generation
    assert source is compiled_generation and not compiled.disable_compile and compiled.cache_implementation == "static"
    assert compiled_path.rollout_prefix.calls == 3 and compiled_path.rollout_prefix.static_cache is not None
    assert hasattr(unwrap(compiled_trainer.model), "_compiled_call")
    # after the run, train() took the fast path off: TRL's own objects are back, every model switch off
    for trainer in (fast_trainer, compiled_trainer):
        assert trainer.fast_path is None and trainer.generation_config.disable_compile
        assert not isinstance(trainer.processing_class.__dict__["image_processor"], CachedImageProcessor)
        policy = unwrap(trainer.model)
        assert policy.rollout_prefix is None and not policy.merge_adapters_for_generation
        assert not policy.compiled_decode and policy.model.shared_prompt is None and policy.model.vision_cache is None
        assert trl_grpo.shuffle_sequence_dict is not trl_seams.group_shuffle

    moved = max(t.abs().max().item() for k, t in adapters["plain"].items() if "lora_B" in k)
    assert moved > 1e-3  # LoRA B starts at zero: the runs did train, by 100x the tolerance below
    for name in ("fast", "compiled"):
        assert len(rewards["plain"]) == 3 and rewards[name] == rewards["plain"], name
        assert adapters[name].keys() == adapters["plain"].keys()
        diff = max((adapters[name][k] - adapters["plain"][k]).abs().max().item() for k in adapters["plain"])
        # float rounding only (measured 1.1e-5 after 3 steps: the optimizer's normalisation magnifies it on
        # coordinates with tiny gradients); the control below, a one-position error, moves it past 1e-4
        assert diff < 2e-5, name


def test_a_wrong_fast_path_shows_in_the_trained_adapter(compose_cfg, tmp_path, monkeypatch):
    """Control for the test above: with the completions one M-RoPE position off, the adapter comes out different."""
    plain = trained_adapter(compose_cfg, tmp_path / "plain", "perf=plain")
    original = group_prefix.run_prefix
    monkeypatch.setattr(group_prefix, "run_prefix", lambda *a, **kw: original(*a, **{**kw, "position_offset": 1}))
    broken = trained_adapter(compose_cfg, tmp_path / "broken", *FAST)
    assert max((broken[k] - plain[k]).abs().max().item() for k in plain) > 1e-4


def test_config_check_refuses_critic_prefix_with_a_critic_server(make_config, no_model_loads):
    server = ["+experiment=smoke", "critic=server", "critic.url=http://127.0.0.1:9", "logging.wandb=false"]
    with pytest.raises(ValueError, match=r"perf\.critic_prefix works with critic\.backend=hf, not 'server'"):
        build_trainer(make_config(*server, "perf=fast"))
    with pytest.raises(no_model_loads):  # control: without critic_prefix the setup goes on to load
        build_trainer(make_config(*server, "perf=fast", "perf.critic_prefix=false"))
