import pytest
import torch
from PIL import Image

from coz_train.rewards.critic import CriticReward, HFCritic, critic_device, parse_score


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("85", 85.0), ("Score: 42.", 42.0), (" 100", 100.0), ("0", 0.0), ("I'd say 7 out of 10", 7.0),
     ("", None), ("great prompt", None), ("150", None), ("-5", 5.0)],
)
def test_parse_score(answer, expected):
    assert parse_score(answer, 100) == expected


def pair(color):
    return [Image.new("RGB", (64, 64), color), Image.new("RGB", (64, 64), tuple(255 - c for c in color))]


@pytest.fixture(scope="module")
def critic_cfg(compose_cfg, tmp_path_factory):
    return compose_cfg(["+experiment=smoke"], tmp_path_factory.mktemp("run")).critic


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


def test_generate_mode_unparsable_is_none_and_counted(critic_cfg):
    cfg = critic_cfg.copy()
    cfg.scoring = "generate"
    critic = HFCritic(cfg, critic_device("cpu"))
    logged = {}
    out = CriticReward(critic, cfg.score_max, 4)(completions=["fur", "bricks"], images=[pair((1, 2, 3))] * 2,
                                                   log_metric=lambda k, v: logged.__setitem__(k, v))
    # a random tiny model writes no number in range: None (never a fake 0), and the rate is logged
    for value, score in zip(out, critic.score([pair((1, 2, 3))] * 2, ["fur", "bricks"]), strict=True):
        assert value == (None if score is None else score / cfg.score_max)
    assert logged["critic/unparsable"] == sum(v is None for v in out) / 2


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


def test_internvl_remote_critic_builds_the_multi_image_chat_call():
    """Our side of the remote-code API: tiling, image headers, tile counts, parsing (the model is a recorder)."""
    from omegaconf import OmegaConf

    from coz_train.rewards.critic import InternVLRemoteCritic

    calls = []

    class ChatRecorder:
        def chat(self, tokenizer, pixel_values, question, generation_config, num_patches_list=None):
            calls.append((pixel_values.shape, question, num_patches_list, generation_config))
            return "Score: 64"

    critic = InternVLRemoteCritic.__new__(InternVLRemoteCritic)
    critic.cfg = OmegaConf.create({"instruction": "Prompt: {prompt}. Score 0-{score_max}.", "score_max": 100,
                                   "max_new_tokens": 8})
    critic.device, critic.dtype, critic.max_tiles = torch.device("cpu"), torch.float32, 6
    critic.tokenizer, critic.model = None, ChatRecorder()
    assert critic.tiles(Image.new("RGB", (512, 512))).shape == (1, 3, 448, 448)
    assert critic.tiles(Image.new("RGB", (1000, 500))).shape == (3, 3, 448, 448)  # 2x1 grid + thumbnail
    out = critic.score([[Image.new("RGB", (512, 512)), Image.new("RGB", (1000, 500))]], ["fur"])
    assert out == [64.0]
    shape, question, patches, generation = calls[0]
    assert shape == (4, 3, 448, 448) and patches == [1, 3]
    assert question == "Image-1: <image>\nImage-2: <image>\nPrompt: fur. Score 0-100."
    assert generation == {"max_new_tokens": 8, "do_sample": False}
