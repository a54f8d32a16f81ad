import pytest

from coz_train.rewards import repetition_reward
from coz_train.rewards.repetition import repetition_penalty


def test_no_repetition_is_zero():
    assert repetition_reward(completions=["a b c d e"]) == [0.0]


def test_fewer_than_n_words_is_zero():
    assert repetition_reward(completions=["", "one", "one two"]) == [0.0, 0.0, 0.0]


def test_fraction_of_repeated_trigrams():
    # words: a b c a b c -> trigrams abc bca cab abc: 3 unique of 4
    assert repetition_reward(completions=["a b c a b c"]) == [pytest.approx(-(1 - 3 / 4))]


def test_lower_cased_whitespace_words():
    # punctuation stays part of a word; case does not matter
    assert repetition_penalty("Fur fur FUR fur") == pytest.approx(-(1 - 1 / 2))
    assert repetition_penalty("fur, fur, fur, fur,") == pytest.approx(-(1 - 1 / 2))
    assert repetition_penalty("fur. fur, fur! fur") == 0.0


def test_long_loop_tends_to_max_penalty_and_scales():
    text = " ".join(["stone"] * 200)
    assert repetition_penalty(text) == pytest.approx(-(1 - 1 / 198))
    assert repetition_penalty(text, max_penalty=-0.5) == pytest.approx(-0.5 * (1 - 1 / 198))


def test_n_configurable_and_conversational():
    completion = [{"role": "assistant", "content": "a a a"}]
    assert repetition_reward(completions=[completion], n=1) == [pytest.approx(-(1 - 1 / 3))]
    assert repetition_reward(completions=[completion], n=4) == [0.0]
    with pytest.raises(ValueError):
        repetition_penalty("a b", n=0)
