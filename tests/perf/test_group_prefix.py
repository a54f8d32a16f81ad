"""perf.group_prefix: each group's prompt runs once, and log-probs, entropies and LoRA gradients equal TRL's path.

Both paths go through TRL's own fused LM head (`model(..., labels=..., fused_lm_head=True)`, as its trainer calls
it); the fast one with the backbone's `shared_prompt` set, the plain one with it off (the library's forward)."""

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from coz_train.perf import group_prefix
from coz_train.perf.group_prefix import SharedPrompt, install_group_prefix
from coz_train.perf.prefix import rope_positions
from coz_train.perf.trl_seams import completion_scoring

TEMPERATURE = 0.7
INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
# 112x112 + 56x84 images give 16 + 6 image tokens, 56x56 + 56x56 give 4 + 4: the second group's prompt is
# shorter and left-padded
MIXED_SIZES = [((112, 112), (56, 84)), ((56, 56), (56, 56))]
# the zoom data's case: every prompt has the same text and image sizes, so the same tokens; only pixels differ
SAME_SIZES = [((56, 84), (56, 56)), ((56, 84), (56, 56))]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def grad_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


@pytest.fixture(params=["qwen2_5_vl"])
def policy(request, make_policy, policy_cfg_with):
    """The tiny fp32 policy with LoRA and TRL's fused LM head on the base model (group prefix off)."""
    model, processor = make_policy(policy_cfg_with({"name_or_path": f"tiny:{request.param}"}))
    add_fused_lm_head(model.get_base_model(), temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    model.eval()
    return model, processor


@pytest.fixture
def prefix_rows(monkeypatch):
    """How many distinct prompts each group-prefix pass ran (one entry per pass)."""
    calls = []
    original = group_prefix.run_prefix

    def spy(inner, input_ids, *args, **kwargs):
        calls.append(input_ids.shape[0])
        return original(inner, input_ids, *args, **kwargs)

    monkeypatch.setattr(group_prefix, "run_prefix", spy)
    return calls


def lora_grads(model) -> torch.Tensor:
    grads = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return grads


def token_weights(batch: dict) -> torch.Tensor:
    """Fixed per-token loss weights (advantage-like), so gradients of every token's log-prob count."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch["input_ids"].shape[0], batch["logits_to_keep"], generator=generator)


def trl_pass(model, batch: dict, weights: torch.Tensor):
    """TRL's call: every row in full through the fused LM head, labels only on the completion."""
    keep = batch["logits_to_keep"]
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :-keep] = -100
    out = model(**{k: batch[k] for k in INPUT_KEYS}, labels=labels, fused_lm_head=True)
    logps, entropy = out.log_probs[:, -keep:], out.entropy[:, -keep:]
    (logps * weights).sum().backward()
    return logps.detach(), entropy.detach(), lora_grads(model)


def plain_pass(model, batch: dict, weights: torch.Tensor):
    model.get_base_model().model.shared_prompt = None
    return trl_pass(model, batch, weights)


def group_pass(model, batch: dict, weights: torch.Tensor, scoring: bool = True, **knobs):
    """The fast path as the trainer installs it: the backbone's shared prompt, and (`scoring`) TRL's fused forward
    asked for the completion positions only."""
    inner = model.get_base_model()
    inner.model.shared_prompt = None
    shared = install_group_prefix(model, SharedPrompt(**knobs))
    wrapped = completion_scoring(inner, shared) if scoring else None
    assert wrapped is not None or not scoring
    try:
        return trl_pass(model, batch, weights)
    finally:
        inner.model.shared_prompt = None
        if wrapped is not None:
            assert wrapped.value.calls == 1
            wrapped.undo()


def assert_same_as_plain(model, batch: dict, prefix_rows: list, groups: int, scoring: bool = True) -> None:
    weights = token_weights(batch)
    ref_logps, ref_entropy, ref_grads = plain_pass(model, batch, weights)
    logps, entropy, grads = group_pass(model, batch, weights, scoring=scoring)
    assert prefix_rows == [groups]  # one prompt pass per group, not per row
    assert logps.shape == ref_logps.shape == (batch["input_ids"].shape[0], batch["logits_to_keep"])
    assert rel_err(logps, ref_logps) < 1e-5
    assert rel_err(entropy, ref_entropy) < 1e-5
    assert ref_grads.norm() > 0
    assert grad_rel_err(grads, ref_grads) < 1e-4
    # padding after a short completion: zero log-prob and entropy, as TRL's fused head gives
    padding = batch["attention_mask"][:, -batch["logits_to_keep"]:] == 0
    assert padding.any()
    assert (logps[padding] == 0).all() and (entropy[padding] == 0).all()


@pytest.mark.parametrize("image_sizes", [MIXED_SIZES, SAME_SIZES], ids=["different-prompt-lengths", "same-tokens"])
@pytest.mark.parametrize("rows", ["grouped", "interleaved", "every-position-scored"])
@pytest.mark.parametrize("policy", ["qwen2_5_vl", "qwen2_vl"], indirect=True)
def test_group_prefix_equals_trl_path(policy, make_batch, shuffle_rows, prefix_rows, image_sizes, rows):
    model, processor = policy
    batch = make_batch(processor, groups=2, per_group=3, max_completion=6, image_sizes=image_sizes)
    prompt_ids = batch["input_ids"][:, :-batch["logits_to_keep"]]
    if image_sizes is MIXED_SIZES:
        assert (batch["attention_mask"][3:, 0] == 0).all()  # the second group is left-padded
    else:
        assert torch.equal(prompt_ids[0], prompt_ids[3])  # groups told apart by their pixels only
    lengths = batch["attention_mask"][:, -batch["logits_to_keep"]:].sum(1)
    assert len(set(lengths.tolist())) > 1  # ragged completions
    if rows == "interleaved":
        batch = shuffle_rows(batch, [3, 0, 4, 1, 5, 2])
        assert batch["images"][0] is not batch["images"][1]  # neighbouring rows from different groups
    assert_same_as_plain(model, batch, prefix_rows, groups=2, scoring=rows != "every-position-scored")


def test_group_prefix_with_a_single_completion_token(policy, make_batch, prefix_rows):
    model, processor = policy
    batch = make_batch(processor, groups=2, per_group=2, max_completion=1, image_sizes=MIXED_SIZES)
    assert batch["logits_to_keep"] == 1 and batch["attention_mask"][:, -1].all()
    weights = token_weights(batch)
    ref_logps, ref_entropy, ref_grads = plain_pass(model, batch, weights)
    logps, entropy, grads = group_pass(model, batch, weights)
    assert prefix_rows == [2]
    assert logps.shape == (4, 1)
    assert rel_err(logps, ref_logps) < 1e-5
    assert rel_err(entropy, ref_entropy) < 1e-5
    assert grad_rel_err(grads, ref_grads) < 1e-4


def test_wrong_positions_or_a_cut_gradient_are_caught(policy, make_batch):
    """Negative controls: the comparison above does see a one-off M-RoPE position and a detached prompt cache."""
    model, processor = policy
    batch = make_batch(processor, groups=2, per_group=3, max_completion=6, image_sizes=MIXED_SIZES)
    weights = token_weights(batch)
    ref_logps, _, ref_grads = plain_pass(model, batch, weights)

    shifted_logps, _, _ = group_pass(model, batch, weights, position_offset=1)
    assert rel_err(shifted_logps, ref_logps) > 1e-2

    detached_logps, _, detached_grads = group_pass(model, batch, weights, detach_cache=True)
    assert rel_err(detached_logps, ref_logps) < 1e-5  # the forward is right ...
    assert grad_rel_err(detached_grads, ref_grads) > 1e-2  # ... but the prompt's share of the gradient is lost


def test_install_group_prefix_refuses_a_model_without_mrope():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(ValueError, match=r"perf\.group_prefix"):
        install_group_prefix(LlamaForCausalLM(config))


def test_a_batch_with_nothing_to_share_is_the_librarys_own_pass(make_policy, make_batch, monkeypatch):
    """Every prompt distinct: the library's forward (no cache, checkpointing left on), TRL's log-probs exactly."""
    model, processor = make_policy()
    add_fused_lm_head(model.get_base_model(), temperature=0.7, outputs=("log_probs", "entropy"))
    batch = make_batch(processor, groups=3, per_group=1)
    shared_passes = []
    monkeypatch.setattr(group_prefix, "run_prefix", lambda *a, **k: shared_passes.append(1))
    model.eval()
    weights = token_weights(batch)
    plain = plain_pass(model, batch, weights)
    shared = install_group_prefix(model)
    fast = trl_pass(model, batch, weights)
    assert shared_passes == [] and shared.calls == 0 and shared.plain_calls == 1
    for got, ref in zip(fast, plain, strict=True):
        assert torch.equal(got, ref)


def test_calls_it_does_not_cover_are_the_librarys_own(make_policy, make_batch):
    """A cache, position ids or use_cache (generation, the prefix passes themselves) go to the library's forward."""
    model, processor = make_policy()
    shared = install_group_prefix(model)
    batch = make_batch(processor, groups=1, per_group=2)
    inputs = {k: batch[k] for k in INPUT_KEYS}
    backbone = model.get_base_model().model
    with torch.no_grad():
        backbone(**inputs, use_cache=True)
        positions = rope_positions(backbone, batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"],
                                   batch["image_grid_thw"])
        backbone(**inputs, position_ids=positions)
        assert (shared.calls, shared.plain_calls) == (0, 1)
        backbone(**inputs)
        assert (shared.calls, shared.plain_calls) == (1, 1)


def test_a_completion_holding_vision_tokens_still_shares_its_prompt(policy, make_batch, prefix_rows):
    """A sampled completion may hold a lone vision-start or vision-end token (text to the model): the row keeps its
    group, so every call makes the same passes (under ZeRO-3 the ranks' passes must match)."""
    model, processor = policy
    batch = make_batch(processor, groups=2, per_group=3, max_completion=6, image_sizes=SAME_SIZES)
    config = model.get_base_model().config
    first = batch["input_ids"].shape[1] - batch["logits_to_keep"]
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][1, first] = config.vision_end_token_id
    batch["input_ids"][4, first] = config.vision_start_token_id
    assert batch["attention_mask"][[1, 4], first].all()
    assert_same_as_plain(model, batch, prefix_rows, groups=2)
