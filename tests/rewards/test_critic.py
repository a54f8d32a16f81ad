import pytest
import torch
from PIL import Image

from coz_train.rewards.critic import CriticReward, CriticScoringError, HFCritic, critic_device, parse_score
from coz_train.rewards.critic.common import check_score_logits


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("85", 85.0), ("Score: 42.", 42.0), (" 100", 100.0), ("0", 0.0), ("I'd say 7 out of 10", 7.0),
     ("", None), ("great prompt", None), ("150", None), ("-5", 5.0)],
)
def test_parse_score(answer, expected):
    assert parse_score(answer, 100) == expected


def pair(color):
    return [Image.new("RGB", (64, 64), color), Image.new("RGB", (64, 64), tuple(255 - c for c in color))]


def test_logits_mode_gives_expected_scores_in_range_and_is_frozen(critic_cfg):
    critic = HFCritic(critic_cfg, critic_device("cpu"))
    assert not critic.model.training
    assert not any(p.requires_grad for p in critic.model.parameters())
    reward = CriticReward(critic, critic_cfg.score_max, batch_size=2)
    images = [pair((200, 10, 10)), pair((10, 200, 10)), pair((10, 10, 200))]
    logged = {}
    out = reward(prompts=[None] * 3, completions=["fur", "bricks", [{"role": "assistant", "content": "sky"}]],
                 images=images, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert all(0.0 <= r <= 1.0 for r in out)
    assert logged["critic/unparsable"] == 0.0
    # batching does not change scores; the prompt text does
    single = CriticReward(critic, critic_cfg.score_max, batch_size=1)(completions=["fur", "bricks", "sky"], images=images)
    assert single == pytest.approx(out, abs=1e-5)
    other = reward(completions=["completely different words here"] * 3, images=images)
    assert other != pytest.approx(out, abs=1e-7)


def test_generate_mode_scores_what_the_critic_writes(critic_cfg):
    cfg = critic_cfg.copy()
    cfg.scoring = "generate"
    critic = HFCritic(cfg, critic_device("cpu"))
    images, texts = [pair((1, 2, 3))] * 2, ["fur", "bricks"]
    answers = [critic.decode(t) for t in critic.generate([critic.conversation(i, t) for i, t in zip(images, texts, strict=True)],
                                                         cfg.max_new_tokens).tokens]
    assert critic.score(images, texts) == [parse_score(a, cfg.score_max) for a in answers]
    # a random tiny model writes no number in range: a batch without any score is an error, not a quiet step
    assert all(parse_score(a, cfg.score_max) is None for a in answers)
    with pytest.raises(CriticScoringError, match="no score for any of the 2 candidates.*critic.max_new_tokens"):
        CriticReward(critic, cfg.score_max, 4, name=cfg.name_or_path)(completions=texts, images=images)


def test_logits_mode_refuses_multi_token_scores(critic_cfg):
    cfg = critic_cfg.copy()
    cfg.score_max = 100
    with pytest.raises(ValueError, match="score_max=9"):
        HFCritic(cfg, critic_device("cpu"))


def test_out_of_memory_halves_the_batch():
    calls = []

    class Flaky:
        def score(self, images, texts):
            calls.append(len(texts))
            if len(texts) > 2:
                raise torch.OutOfMemoryError("simulated")
            return [50.0] * len(texts)

    out = CriticReward(Flaky(), 100, batch_size=8)(completions=["a"] * 5, images=[[None, None]] * 5)
    assert out == [0.5] * 5
    assert calls == [5, 4, 2, 2, 1]  # 8 (5 left) -> OOM, 4 -> OOM, then pairs of 2 fit


def test_missing_images_is_an_error():
    with pytest.raises(ValueError, match="images"):
        CriticReward(object(), 100, 8)(completions=["a"], images=None)


def test_unparsable_answers_become_none_not_zero():
    class Answers:
        def score(self, images, texts):
            return [parse_score(a, 100) for a in ("no idea", "Score: 50", "200", "0")][: len(texts)]

    logged = {}
    out = CriticReward(Answers(), 100, 8)(completions=["a", "b", "c", "d"], images=[[None, None]] * 4,
                                          log_metric=lambda k, v: logged.__setitem__(k, v))
    assert out == [None, 0.5, None, 0.0]
    assert logged["critic/unparsable"] == 0.5


class _Template:
    """The remote code's conversation template (internvl2_5 style), as a stand-in for `model.conv_template`."""

    roles = ("<|im_start|>user\n", "<|im_start|>assistant\n")
    system_message = "SYS"

    def __init__(self):
        self.messages = []

    def append_message(self, role, message):
        self.messages.append((role, message))

    def get_prompt(self):
        out = f"<|im_start|>system\n{self.system_message}<|im_end|>\n"
        return out + "".join(role + (f"{m}<|im_end|>\n" if m else "") for role, m in self.messages)


class _Tokens:
    """A tokenizer stand-in: one id per distinct query, answers decoded from a table."""

    padding_side = "right"

    def __init__(self, answers):
        self.answers, self.queries = answers, []

    def __call__(self, queries, return_tensors, padding):
        from transformers import BatchEncoding

        self.queries = list(queries)
        ids = torch.arange(len(queries))[:, None]
        return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def convert_tokens_to_ids(self, token):
        return {"<IMG_CONTEXT>": 7, "<|im_end|>": 2}[token]

    def batch_decode(self, out, skip_special_tokens):
        return [self.answers[int(row[0])] for row in out]


def test_internvl_remote_critic_batches_the_multi_image_prompts():
    """Our side of the remote-code API: tiling, image headers, tile counts, one batched generate (recorded)."""
    from omegaconf import OmegaConf

    from coz_train.rewards.critic import InternVLRemoteCritic

    calls = []

    class GenerateRecorder:
        template, system_message, num_image_token, conv_template = "internvl2_5", "SYS", 2, _Template()

        def generate(self, pixel_values, input_ids, attention_mask, **kwargs):
            calls.append((pixel_values.shape, input_ids.shape, kwargs, self.img_context_token_id))
            return input_ids  # the row index picks the answer

    critic = InternVLRemoteCritic.__new__(InternVLRemoteCritic)
    critic.cfg = OmegaConf.create({"instruction": "Prompt: {prompt}. Score 0-{score_max}.", "score_max": 100,
                                   "max_new_tokens": 8})
    critic.device, critic.dtype, critic.max_tiles = torch.device("cpu"), torch.float32, 6
    critic.tokenizer, critic.model = _Tokens(["Score: 64<|im_end|>junk", "no idea"]), GenerateRecorder()
    assert critic.tiles(Image.new("RGB", (512, 512))).shape == (1, 3, 448, 448)
    assert critic.tiles(Image.new("RGB", (1000, 500))).shape == (3, 3, 448, 448)  # 2x1 grid + thumbnail
    assert critic.tiles(Image.new("RGB", (700, 700))).shape == (5, 3, 448, 448)  # 2x2 grid + thumbnail
    small, wide = Image.new("RGB", (512, 512)), Image.new("RGB", (1000, 500))
    out = critic.score([[small, wide], [wide, small]], ["fur", "sky"])
    assert out == [64.0, None]
    assert len(calls) == 1  # one batched call for both candidates
    pixels, ids, kwargs, context_id = calls[0]
    assert pixels == (8, 3, 448, 448) and ids == (2, 1) and context_id == 7
    assert kwargs == {"max_new_tokens": 8, "do_sample": False, "eos_token_id": 2}
    assert critic.tokenizer.padding_side == "left"
    image = lambda n: "<img>" + "<IMG_CONTEXT>" * 2 * n + "</img>"  # noqa: E731
    assert critic.tokenizer.queries[0] == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
        f"Image-1: {image(1)}\nImage-2: {image(3)}\nPrompt: fur. Score 0-100.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert critic.model.conv_template.messages == []  # the model's own template is never modified


def test_tiling_matches_internvl_dynamic_preprocess_counts():
    """Tile counts over a grid of sizes equal those of InternVL's own dynamic_preprocess (fixture note)."""
    import json
    from pathlib import Path

    from coz_train.rewards.critic.tiling import tile_count

    ref = json.loads((Path(__file__).parent / "fixtures" / "internvl_tile_counts.json").read_text())
    sizes = ref["sizes"]
    for max_tiles, rows in ref["counts"].items():
        got = [[tile_count(w, h, int(max_tiles)) for h in sizes] for w in sizes]
        assert got == rows, f"max_tiles={max_tiles}"
    assert tile_count(700, 700, 6) == 5 and tile_count(1024, 1024, 6) == 5 and tile_count(448, 448, 6) == 1


def test_tiles_are_the_resized_image_cut_in_row_major_order():
    from coz_train.rewards.critic.tiling import tile_images

    image = Image.new("RGB", (1000, 500))
    image.paste((255, 0, 0), (500, 0, 1000, 500))  # right half red
    tiles = tile_images(image, 6)
    assert [t.size for t in tiles] == [(448, 448)] * 3
    assert tiles[0].getpixel((10, 10)) == (0, 0, 0) and tiles[1].getpixel((400, 10)) == (255, 0, 0)
    assert tiles[2].getpixel((10, 10)) == (0, 0, 0) and tiles[2].getpixel((440, 10)) == (255, 0, 0)  # thumbnail


class _Scores:
    def __init__(self, scores):
        self.scores = scores

    def score(self, images, texts):
        return self.scores[: len(texts)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_score_is_an_error_naming_the_critic(bad):
    with pytest.raises(CriticScoringError, match="Critic org/critic-8b: 1 of 3 scores are NaN or infinite.*critic.dtype"):
        CriticReward(_Scores([50.0, bad, None]), 100, 8, name="org/critic-8b")(completions=["a"] * 3,
                                                                                images=[[None, None]] * 3)


def test_all_none_is_an_error_but_some_none_is_not():
    with pytest.raises(CriticScoringError, match="no score for any of the 3"):
        CriticReward(_Scores([None] * 3), 100, 2)(completions=["a"] * 3, images=[[None, None]] * 3)
    assert CriticReward(_Scores([None, 20.0, None]), 100, 8)(completions=["a"] * 3, images=[[None]] * 3) == [None, 0.2, None]


def test_all_none_goes_through_the_reward_failure_policy():
    """Raised inside a guarded reward: retried, then the run stops (or skips the step) with the critic's message."""
    from coz_train.rewards.guard import GuardedReward, RewardFailedError, UpdateGuard

    stop = GuardedReward(CriticReward(_Scores([None] * 2), 100, 8), UpdateGuard("stop"), retries=1, backoff_s=0.0)
    with pytest.raises(RewardFailedError, match=r"2 attempts in [\d.]+ s: CriticScoringError: Critic critic gave no score"):
        stop(completions=["a", "b"], images=[[None, None]] * 2)
    guard = UpdateGuard("skip")
    skip = GuardedReward(CriticReward(_Scores([None] * 2), 100, 8), guard, retries=0, backoff_s=0.0)
    assert skip(completions=["a", "b"], images=[[None, None]] * 2) == [None, None]
    assert "CriticScoringError" in guard.skip_pending


def test_score_logits_guard():
    check_score_logits(torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]), "c")  # one flat row alone is allowed
    with pytest.raises(CriticScoringError, match="non-finite logits for 1 of 2"):
        check_score_logits(torch.tensor([[0.0, float("nan"), 2.0], [0.0, 1.0, 2.0]]), "c")
    with pytest.raises(CriticScoringError, match="constant for all 2 candidates"):
        check_score_logits(torch.zeros(2, 10), "c")


def test_logits_mode_with_zeroed_weights_is_an_error(critic_cfg):
    """The failure mode of a checkpoint whose weights never arrived: flat logits, every score score_max / 2."""
    critic = HFCritic(critic_cfg, critic_device("cpu"))
    with torch.no_grad():
        critic.model.lm_head.weight.zero_()
    with pytest.raises(CriticScoringError, match="constant"):
        critic.score([pair((9, 9, 9))] * 2, ["fur", "sky"])


def test_internvl_remote_is_refused_on_transformers_5_with_the_native_route():
    from coz_train.rewards.critic.internvl_remote import check_transformers_version

    check_transformers_version("4.49.0")
    with pytest.raises(ValueError, match="critic=internvl2_5_8b.*coz_train.critic_convert"):
        check_transformers_version("5.24.0")
