import pytest

from coz_train.rewards import DEFAULT_PHRASES, phrase_exclusion_reward


def conv(text):
    return [{"role": "assistant", "content": text}]


def test_clean_prompt_scores_one_and_banned_phrase_zero():
    completions = ["fur, whiskers, green eyes", "The second image shows fur", "a cat in the FIRST IMAGE"]
    assert phrase_exclusion_reward(prompts=[None] * 3, completions=completions) == [1.0, 0.0, 0.0]


def test_conversational_and_plain_forms_agree():
    texts = ["brick wall, moss", "zoomed in on a brick wall"]
    assert phrase_exclusion_reward(completions=[conv(t) for t in texts]) == phrase_exclusion_reward(completions=texts)


def test_content_parts_list():
    completion = [{"role": "assistant", "content": [{"type": "text", "text": "Second   image: leaves"}]}]
    assert phrase_exclusion_reward(completions=[completion]) == [0.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 1.0),
        ("second image", 0.0),  # the whole text
        ("leaves. second image", 0.0),  # at the end, after punctuation
        ("(first image)", 0.0),  # inside punctuation
        ("the imagery of stone", 1.0),  # 'the image' must end on a word boundary
        ("secondimage", 1.0),
        ("second\nimage", 0.0),  # whitespace-normalised
    ],
)
def test_boundaries(text, expected):
    assert phrase_exclusion_reward(completions=[text]) == [expected]


def test_custom_phrases_replace_defaults():
    assert phrase_exclusion_reward(completions=["second image", "blurry"], phrases=["blurry"]) == [1.0, 0.0]
    assert "first image" in DEFAULT_PHRASES and "second image" in DEFAULT_PHRASES


def test_extra_trl_kwargs_are_ignored():
    out = phrase_exclusion_reward(prompts=["p"], completions=["ok"], completion_ids=[[1]], images=[[None]], trainer_state=None)
    assert out == [1.0]
