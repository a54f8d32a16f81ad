"""The converted InternVL2.5 critic reproduces the upstream model code's outputs (fixture made once, see its note)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))

from internvl_cases import CASES, INSTRUCTION, MAX_NEW_TOKENS, SCORE_MAX, case_images  # noqa: E402

from coz_train.rewards.critic import CriticReward, HFCritic, critic_device, parse_score  # noqa: E402
from coz_train.rewards.critic.conversion import convert  # noqa: E402
from coz_train.rewards.critic.conversion.convert import convert_state_dict, split_wqkv  # noqa: E402
from coz_train.tiny import internvl2_5  # noqa: E402

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "internvl2_5_tiny_reference.json").read_text())["cases"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("internvl2_5")
    hub = internvl2_5.build(root / "hub", seed=0)
    return hub, convert(hub, root / "hf", max_tiles=6)


@pytest.fixture(scope="module")
def critic(folders):
    cfg = OmegaConf.create(dict(
        name_or_path=str(folders[1]), backend="hf", revision=None, dtype="float32", attn_implementation="eager",
        device="cpu", scoring="generate", score_max=SCORE_MAX, batch_size=3, max_new_tokens=MAX_NEW_TOKENS,
        min_pixels=None, max_pixels=None, trust_remote_code=False, image_backend="pil",
        instruction=INSTRUCTION))
    return HFCritic(cfg, critic_device("cpu"))


def conversations(critic):
    return [critic.conversation(case_images(i), text) for i, (_, text) in enumerate(CASES)]


def test_hub_layout_checkpoint_has_no_model_code(folders):
    hub, _ = folders
    assert not list(hub.glob("*.py"))
    config = json.loads((hub / "config.json").read_text())
    assert config["model_type"] == "internvl_chat" and config["llm_config"]["model_type"] == "internlm2"


def test_prompts_are_tokenized_as_the_upstream_chat(critic):
    enc = critic.encode(conversations(critic))
    for row, ref in zip(range(len(CASES)), REFERENCE, strict=True):
        ids = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()  # left padding removed
        assert ids == ref["input_ids"], f"case {row}"
    tiles = [len(ref["tiles"]) and sum(ref["tiles"]) for ref in REFERENCE]
    assert enc["pixel_values"].shape[0] == sum(tiles)


def test_next_token_logits_equal_the_upstream_model_fp32(critic):
    logits = critic.next_token_logits(conversations(critic))  # [3, vocab], the three cases batched (left-padded)
    for row, ref in enumerate(REFERENCE):
        expected = torch.tensor(ref["next_token_logits"])
        assert logits[row, : expected.numel()].tolist() == pytest.approx(expected.tolist(), abs=1e-4), f"case {row}"


def test_greedy_answers_equal_the_upstream_model(critic):
    generation = critic.generate(conversations(critic), MAX_NEW_TOKENS)
    tokenizer = critic.processor.tokenizer
    for row, ref in enumerate(REFERENCE):
        assert generation.tokens[row] == ref["greedy_tokens"], f"case {row}"
        text = critic.decode(generation.tokens[row]).strip()
        assert parse_score(text, SCORE_MAX) == parse_score(ref["answer"], SCORE_MAX)
        # Known difference: a run of byte-fallback tokens that is not valid UTF-8 decodes to one U+FFFD per byte in
        # `tokenizers`, while sentencepiece keeps the valid single bytes; any other answer decodes identically.
        if not any(t.startswith("<0x") for t in tokenizer.convert_ids_to_tokens(ref["greedy_tokens"])):
            assert text == ref["answer"], f"case {row}"


def test_the_critic_reward_scores_the_converted_checkpoint(critic):
    """The same path as training: a batch through CriticReward; random weights write no number here."""
    images = [case_images(i) for i in range(len(CASES))]
    expected = [parse_score(ref["answer"], SCORE_MAX) for ref in REFERENCE]
    assert critic.score(images, [text for _, text in CASES]) == expected
    assert all(e is None for e in expected)  # so the reward refuses the batch instead of a quiet step
    with pytest.raises(Exception, match="no score for any of the 3"):
        CriticReward(critic, SCORE_MAX, 3)(completions=[text for _, text in CASES], images=images)


def test_split_wqkv_follows_the_grouped_layout():
    heads, kv_heads, head_dim, hidden = 4, 2, 3, 5
    rows = torch.arange((heads + 2 * kv_heads) * head_dim, dtype=torch.float32)[:, None].expand(-1, hidden)
    q, k, v = split_wqkv(rows, heads, kv_heads)
    # per kv head: [q, q, k, v] blocks of head_dim rows
    assert q[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17]
    assert k[:, 0].tolist() == [6, 7, 8, 18, 19, 20] and v[:, 0].tolist() == [9, 10, 11, 21, 22, 23]


def test_conversion_refuses_other_checkpoints(tmp_path, folders):
    hub, native = folders
    with pytest.raises(ValueError, match="not 'internvl_chat'"):
        convert(native, tmp_path / "again")
    config = json.loads((hub / "config.json").read_text())
    config["llm_config"]["model_type"] = "qwen2"
    other = tmp_path / "qwen"
    other.mkdir()
    for f in hub.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="only InternLM2 language models"):
        convert(other, tmp_path / "out")


def test_conversion_at_8b_size_on_the_meta_device():
    """Names and shapes at InternVL2.5-8B's dimensions (InternViT-300M, InternLM2.5-7B: 32 heads, 8 kv heads)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from coz_train.rewards.critic.conversion.convert import text_config, vision_config

    vit = dict(internvl2_5.VISION, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
               num_hidden_layers=24, patch_size=14)
    llm = dict(internvl2_5.LLM, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, num_hidden_layers=32, vocab_size=92553)
    with torch.device("meta"):
        hub = {name: torch.empty(shape) for name, shape in internvl2_5.tensor_shapes(92553, vit, llm).items()}
        config = InternVLConfig(vision_config=vision_config(vit), text_config=text_config(llm), image_seq_length=256,
                                image_token_id=92546, tie_word_embeddings=False)
        model = InternVLForConditionalGeneration(config)
    native = convert_state_dict(hub, llm)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert {name: tuple(t.shape) for name, t in native.items()} == expected
    assert expected["model.language_model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)
    assert config.text_config.rope_parameters["rope_type"] == "dynamic"


def test_critic_max_tiles_sets_the_tiling_of_a_converted_folder(critic, folders):
    """critic.max_tiles applies to a folder converted with another value (here 6 -> 2: 2x1 + thumbnail)."""
    cfg = critic.cfg.copy()
    cfg.max_tiles = 2
    small = HFCritic(cfg, critic_device("cpu"))
    assert small.processor.image_processor.max_patches == 2
    enc = small.encode([small.conversation(case_images(1), "fur")])  # 1000x500 -> 2x1 + thumbnail, 448x448 -> 1
    assert enc["pixel_values"].shape[0] == 3 + 1
