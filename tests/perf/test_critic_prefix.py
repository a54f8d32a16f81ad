"""perf.critic_prefix: the critic's shared-prefix scoring gives the plain path's logits, tokens and rewards."""

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from coz_train.perf import critic_prefix
from coz_train.perf.prefix import unwrap
from coz_train.rewards.critic import build_critic_reward

TEXTS = ["fur", "red bricks on an old wall with green moss", "a blue sky",
         "sharp detailed face of an astronaut in a white suit", "cup", "x y"]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def image_sets():
    """Three image pairs from shipped photographs; 56 px -> 4 image tokens, 112 px -> 16 (tiny critic budget),
    so the three groups' prefixes have different lengths."""
    astronaut, coffee, chelsea = (Image.fromarray(skdata.astronaut()), Image.fromarray(skdata.coffee()),
                                  Image.fromarray(skdata.chelsea()))
    return {
        "a": [astronaut.resize((112, 112)), astronaut.crop((100, 100, 300, 300)).resize((56, 56))],
        "b": [coffee.resize((56, 56)), coffee.crop((0, 0, 200, 200)).resize((56, 56))],
        "c": [chelsea.resize((112, 112)), chelsea.crop((50, 50, 250, 250)).resize((112, 112))],
    }


def mixed_batch(critic, image_sets):
    """Groups a and b with three candidates each (different lengths, rows interleaved) and a one-row group c.
    Each group's images are fresh but equal copies: grouping compares pixels, not objects."""
    convs = []
    for i, text in enumerate(TEXTS):
        images = image_sets["ab"[i % 2]]
        convs.append(critic.conversation([im.copy() for im in images], text))
    convs.append(critic.conversation(image_sets["c"], "a cat"))
    return convs


def shared_logits(critic, convs, **kwargs):
    return critic_prefix.next_token_logits(critic.model, critic.encode(convs), convs,
                                           critic.processor.tokenizer.pad_token_id, **kwargs)


def shared_generate(critic, convs, max_new_tokens, output_logits=False):
    return critic_prefix.generate(critic.model, critic.encode(convs), convs, max_new_tokens,
                                  eos_token_ids=critic.eos_token_ids,
                                  pad_token_id=critic.processor.tokenizer.pad_token_id, output_logits=output_logits)


def test_groups_share_prefixes_of_different_lengths(critic, image_sets):
    convs = mixed_batch(critic, image_sets)
    enc = critic.encode(convs)
    mask = enc["attention_mask"].bool()
    rows = [enc["input_ids"][r][mask[r]] for r in range(len(convs))]
    mm = [enc["mm_token_type_ids"][r][mask[r]] for r in range(len(convs))]
    plan = critic_prefix.plan_groups(convs, rows, mm)
    assert [members for members, _ in plan] == [[0, 2, 4], [1, 3, 5], [6]]
    lengths = [length for _, length in plan]
    assert len(set(lengths)) == 3  # left padding among prefixes is exercised
    assert lengths[2] == len(rows[6]) - 1  # a lone row keeps its last token as its suffix
    for members, length in plan:
        assert all(not mm[m][length:].any() for m in members)  # every image token lies in the prefix
    assert len({len(rows[m]) - length for m in plan[0][0]}) == 3  # suffixes of different lengths


def test_logits_equal_plain_and_negative_control_differs(critic, image_sets):
    convs = mixed_batch(critic, image_sets)
    ref = critic.next_token_logits(convs)
    good = rel_err(shared_logits(critic, convs), ref)
    bad = rel_err(shared_logits(critic, convs, position_offset=1), ref)
    print(f"critic prefix logits rel err: shared {good:.2e}, position_offset=1 {bad:.2e}")
    assert good < 1e-5
    assert bad > 1e-3 and bad > 100 * good


def test_same_images_with_different_leading_text_fall_back_to_single_rows(critic, image_sets):
    images = image_sets["a"]
    convs = [[{"role": "user", "content": [{"type": "text", "text": lead}, *[{"type": "image", "image": im} for im in images],
                                           {"type": "text", "text": f"Rate: {text}"}]}]
             for lead, text in [("first view", "fur"), ("another look", "fur"), ("first view", "a longer candidate")]]
    enc = critic.encode(convs)
    mask = enc["attention_mask"].bool()
    rows = [enc["input_ids"][r][mask[r]] for r in range(3)]
    mm = [enc["mm_token_type_ids"][r][mask[r]] for r in range(3)]
    plan = critic_prefix.plan_groups(convs, rows, mm)
    assert [members for members, _ in plan] == [[0], [1], [2]]
    assert rel_err(shared_logits(critic, convs), critic.next_token_logits(convs)) < 1e-5


def test_generate_gives_plain_tokens_and_logits(critic, image_sets):
    convs = mixed_batch(critic, image_sets)
    ref = critic.generate(convs, 6, output_logits=True)
    got = shared_generate(critic, convs, 6, output_logits=True)
    assert got.tokens == ref.tokens
    assert got.finished == ref.finished
    assert got.prompt_tokens == ref.prompt_tokens
    assert all(rel_err(g, r) < 1e-5 for g, r in zip(got.logits, ref.logits, strict=True))


def test_generate_cuts_rows_at_eos_like_plain(critic, image_sets):
    convs = mixed_batch(critic, image_sets)
    free = critic.generate(convs, 6).tokens
    critic.model.generation_config.eos_token_id = free[0][2]  # a token the first row writes third
    ref = critic.generate(convs, 6, output_logits=True)
    got = shared_generate(critic, convs, 6, output_logits=True)
    assert ref.finished[0] and len(ref.tokens[0]) <= 3
    assert (got.tokens, got.finished) == (ref.tokens, ref.finished)
    assert all(rel_err(g, r) < 1e-5 for g, r in zip(got.logits, ref.logits, strict=True))
    # every row stops at once: the loop ends early, as generate does
    critic.model.generation_config.eos_token_id = sorted({row[0] for row in free})
    assert shared_generate(critic, convs, 6).tokens == critic.generate(convs, 6).tokens == [row[:1] for row in free]


def test_generate_with_repetition_penalty_matches_unpadded_generate(critic, image_sets):
    convs = mixed_batch(critic, image_sets)
    plain = shared_generate(critic, convs, 6).tokens
    critic.model.generation_config.repetition_penalty = 1.3
    got = shared_generate(critic, convs, 6)
    alone = [critic.generate([conv], 6).tokens[0] for conv in convs]
    assert got.tokens == alone
    assert got.tokens != plain  # the penalty changed some choice: the comparison means something


def test_generate_refuses_options_it_does_not_reproduce(critic, image_sets):
    critic.model.generation_config.no_repeat_ngram_size = 2
    convs = mixed_batch(critic, image_sets)[:2]
    with pytest.raises(ValueError, match="perf.critic_prefix=false"):
        shared_generate(critic, convs, 4)


@pytest.mark.parametrize("scoring", ["logits", "generate"])
def test_critic_reward_scores_equal_with_and_without_shared_prefix(make_config, image_sets, scoring):
    """perf=fast's critic (shared prefix, image cache, pixel handles read by a vision cache on the critic) against
    the plain one."""
    images = [image_sets["ab"[i % 2]] for i in range(len(TEXTS))] + [image_sets["c"]]
    completions = [*TEXTS, [{"role": "assistant", "content": "a cat"}]]
    out, answers = {}, {}
    for on in (False, True):
        cfg = make_config("+experiment=smoke", "perf=fast" if on else "perf=plain", f"critic.scoring={scoring}",
                          "critic.device=cpu")
        reward = build_critic_reward({}, cfg)
        assert reward.backend.shared_prefix is on
        vision = unwrap(reward.backend.model).model.vision_cache
        assert (vision is not None and vision.pixel_source is reward.backend.processor.image_processor) is on
        texts = [*TEXTS, "a cat"]
        # generate mode on a random tiny critic scores nothing, which the reward refuses: compare the backend's scores
        out[on] = reward(completions=completions, images=images) if scoring == "logits" else reward.backend.score(images, texts)
        convs = [reward.backend.conversation(imgs, text) for imgs, text in zip(images, texts, strict=True)]
        answers[on] = reward.backend.generate(convs, cfg.critic.max_new_tokens).tokens  # HFCritic dispatch
        if on:
            assert vision.misses == 6 and vision.hits > 0  # 3 image pairs, each image through the tower once
    if scoring == "logits":
        assert all(s is not None for s in out[True])
        assert out[True] == pytest.approx(out[False], rel=1e-5)
    else:
        assert out[True] == out[False]
    assert answers[True] == answers[False]


@pytest.mark.parametrize("backend", ["server", "internvl_remote"])
def test_shared_prefix_needs_the_hf_backend(make_config, backend):
    cfg = make_config("+experiment=smoke", "perf.critic_prefix=true", f"critic.backend={backend}",
                      "critic.url=http://127.0.0.1:9", "critic.scoring=generate")
    with pytest.raises(ValueError, match="perf.critic_prefix works with critic.backend=hf"):
        build_critic_reward({}, cfg)
