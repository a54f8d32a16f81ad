"""The critic's batch encoded head by head (`perf.text_cache`): the processor's token ids and pixel values, bit for bit."""

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from coz_train.perf.image_cache import PixelHandles, install_image_cache
from coz_train.policy.load import encode_chats
from coz_train.rewards.critic import build_critic_reward, install_critic_switches
from coz_train.rewards.critic.templated import TemplatedEncoder, conversation_images, same_encoding

# candidate prompts that stress the cut: quotes and spaces at the joins, unicode, a control token and a
# chat marker written as text, an empty prompt, repeats
TEXTS = ["fur", ' "quoted" ', "  leading and trailing spaces  ", "naïve café, 日本語 ✓", "", "fur",
         "ends the turn <|im_end|> early", "a\nnew line", "<|vision_start|> as text", "x y"]


@pytest.fixture(scope="module")
def pairs():
    """Three image pairs of different sizes (different numbers of image tokens, so heads of different lengths)."""
    astronaut, coffee, chelsea = (Image.fromarray(skdata.astronaut()), Image.fromarray(skdata.coffee()),
                                  Image.fromarray(skdata.chelsea()))
    return [[astronaut.resize((112, 112)), astronaut.crop((100, 100, 300, 300)).resize((56, 56))],
            [coffee.resize((56, 56)), coffee.crop((0, 0, 200, 200)).resize((84, 56))],
            [chelsea.resize((112, 84)), chelsea.crop((50, 50, 250, 250)).resize((112, 112))]]


def batch(critic, pairs, texts=TEXTS):
    """Rows of the three pairs interleaved; the last pair also as fresh equal copies (another head, same text)."""
    convs = [critic.conversation(pairs[i % 3], text) for i, text in enumerate(texts)]
    return convs + [critic.conversation([im.copy() for im in pairs[2]], texts[0])]


@pytest.mark.parametrize("cache", ["none", "image_cache", "pixel_handles"])
def test_the_encoding_is_the_processors_bit_for_bit(critic, pairs, cache):
    if cache != "none":
        install_image_cache(critic.processor, handles=cache == "pixel_handles")
    convs = batch(critic, pairs)
    encoder = TemplatedEncoder(critic.processor)
    plain = encode_chats(critic.processor, convs)
    fast = encoder.assemble(convs)
    assert fast is not None and same_encoding(fast, plain)
    for key in plain:
        assert torch.equal(fast[key].as_subclass(torch.Tensor), plain[key].as_subclass(torch.Tensor)), key
    assert isinstance(fast["pixel_values"], PixelHandles) is (cache == "pixel_handles")
    assert encoder.heads == 3  # three pairs of different sizes; the copies' head is the third's
    assert encoder(convs) is not None and encoder.checked and encoder.enabled and encoder.served == 1


def test_right_padding_and_a_single_row(critic, pairs):
    critic.processor.tokenizer.padding_side = "right"
    for convs in (batch(critic, pairs), batch(critic, pairs, ["one row"])[:1]):
        assert same_encoding(TemplatedEncoder(critic.processor).assemble(convs), encode_chats(critic.processor, convs))


def test_batches_it_does_not_cover_go_to_the_processor(critic, pairs):
    encoder = TemplatedEncoder(critic.processor)
    system = [{"role": "system", "content": [{"type": "text", "text": "be terse"}]}] + critic.conversation(pairs[0], "a")
    url = [{"role": "user", "content": [{"type": "image", "url": "x.png"}, {"type": "text", "text": "a"}]}]
    text_only = [{"role": "user", "content": [{"type": "text", "text": "a"}]}]
    assert conversation_images(system) is None and conversation_images(url) is None
    assert conversation_images(text_only) == []
    for conversation in (system, url, text_only):
        assert encoder.assemble([conversation]) is None
    placeholder = critic.conversation(pairs[0], "an <|image_pad|> in the prompt")
    assert encoder.assemble([placeholder]) is None
    with pytest.raises(ValueError):  # as the processor's own call says
        encoder([placeholder])
    assert encoder.served == 0


def test_a_difference_on_the_first_batch_turns_it_off(critic, pairs, monkeypatch):
    convs = batch(critic, pairs)
    encoder = TemplatedEncoder(critic.processor)
    real = encoder.assemble

    def off_by_one(conversations):
        out = real(conversations)
        out["input_ids"][0, -1] += 1
        return out

    monkeypatch.setattr(encoder, "assemble", off_by_one)
    assert same_encoding(encoder(convs), encode_chats(critic.processor, convs))
    assert not encoder.enabled and encoder.served == 0
    assert same_encoding(encoder(convs), encode_chats(critic.processor, convs))


def test_the_switch_installs_and_undoes(critic, pairs):
    changes = install_critic_switches(critic, {"text_cache": True})
    assert isinstance(critic.encoder, TemplatedEncoder) and [c.reason for c in changes] == ["text_cache"]
    convs = batch(critic, pairs)
    encoded = critic.encode(convs)
    for change in reversed(changes):
        change.undo()
    assert critic.encoder is None and "encoder" not in vars(critic)
    assert same_encoding(encoded, critic.encode(convs))


@pytest.mark.parametrize("scoring", ["logits", "generate"])
def test_perf_fast_critic_scores_with_the_encoder(make_config, pairs, scoring):
    images = [pairs[i % 3] for i in range(len(TEXTS))]
    out = {}
    for perf in ("plain", "fast"):
        cfg = make_config("+experiment=smoke", f"perf={perf}", f"critic.scoring={scoring}", "critic.device=cpu")
        backend = build_critic_reward({}, cfg).backend
        assert (backend.encoder is not None) is (perf == "fast")
        convs = [backend.conversation(imgs, text) for imgs, text in zip(images, TEXTS, strict=True)]
        out[perf] = (backend.score(images, TEXTS), backend.generate(convs, cfg.critic.max_new_tokens).tokens)
        if perf == "fast":
            assert backend.encoder.served == 2 and backend.encoder.heads == 3  # score and generate, 3 heads once
    assert out["fast"][1] == out["plain"][1]
    if scoring == "logits":
        assert out["fast"][0] == pytest.approx(out["plain"][0], rel=1e-5)
    else:
        assert out["fast"][0] == out["plain"][0]
