import pytest
from omegaconf import OmegaConf

from coz_train.rewards import active_rewards, build_rewards, registered
from coz_train.rewards.validity import (
    check_validity,
    content_words,
    empty_or_non_latin,
    latin_share,
    validity_reward,
)


def test_registered_but_not_among_the_default_rewards(make_config):
    assert "validity" in registered()
    assert "validity" not in make_config().rewards


def test_content_words_are_distinct_letter_runs_without_function_words():
    assert content_words("fur, whiskers and a green eye") == {"fur", "whiskers", "green", "eye"}
    assert content_words("Fur fur FUR") == {"fur"}
    # digits, underscores and punctuation split words ("up" is a function word); one-letter runs are no words
    assert content_words("close-up 4k x_ray b") == {"close", "ray"}
    assert content_words("the of and it is") == set()


def test_enough_content_words_in_latin_script_score_one():
    assert validity_reward(completions=["fur, whiskers, eye", "brick wall"]) == [1.0, 1.0]
    # accented Latin letters are Latin: a script check, not a language check
    assert validity_reward(completions=["pelage, moustaches, œil doré"]) == [1.0]


def test_too_few_content_words_score_zero():
    assert validity_reward(completions=["fur", "the fur of it", "fur fur fur fur"]) == [0.0, 0.0, 0.0]
    assert validity_reward(completions=["fur"], min_content_words=1) == [1.0]
    assert validity_reward(completions=["fur, whiskers"], min_content_words=3) == [0.0]


def test_empty_and_letterless_completions_score_zero():
    assert validity_reward(completions=["", "   ", "...", "12 34", "\ufffd\ufffd"]) == [0.0] * 5


def test_non_latin_text_scores_zero():
    assert validity_reward(completions=["毛皮, 胡须, 眼睛", "мех, усы, глаз", "فرو شوارب عين"]) == [0.0] * 3
    # mostly non-Latin with a Latin word or two still fails at the default 0.5
    assert validity_reward(completions=["мех усы глаз трава fur"]) == [0.0]
    # with the script check off, the Cyrillic words count as content words
    assert validity_reward(completions=["мех, усы"], min_latin_share=0.0) == [1.0]


def test_conversational_completions():
    completion = [{"role": "assistant", "content": [{"type": "text", "text": "stone, moss"}]}]
    assert validity_reward(completions=[completion]) == [1.0]


def test_latin_share_counts_letters_only():
    assert latin_share("") is None and latin_share("12, !?") is None
    assert latin_share("abc 123") == 1.0
    assert latin_share("ab мы") == pytest.approx(0.5)
    assert latin_share("猫猫猫a") == pytest.approx(0.25)


def test_empty_or_non_latin():
    assert empty_or_non_latin("") and empty_or_non_latin("  \n") and empty_or_non_latin("?!")
    assert empty_or_non_latin("猫猫猫a") and not empty_or_non_latin("猫猫猫a", min_latin_share=0.25)
    assert not empty_or_non_latin("fur") and not empty_or_non_latin("ab мы")  # a share of exactly 0.5 passes


@pytest.mark.parametrize(
    "params, key",
    [
        ({"min_content_words": 0}, "min_content_words"),
        ({"min_content_words": 1.5}, "min_content_words"),
        ({"min_content_words": True}, "min_content_words"),
        ({"min_latin_share": 1.5}, "min_latin_share"),
        ({"min_latin_share": -0.1}, "min_latin_share"),
        ({"min_latin_share": "half"}, "min_latin_share"),
    ],
)
def test_bad_parameters_are_refused_at_start_up(params, key):
    with pytest.raises(ValueError, match=f"rewards.validity.{key}"):
        check_validity(params)
    with pytest.raises(ValueError, match=f"rewards.validity.{key}"):
        active_rewards(OmegaConf.create({"validity": {"weight": 0.5, **params}}))
    # a reward with weight 0 is not checked
    active_rewards(OmegaConf.create({"validity": {"weight": 0, **params}, "repetition": {"weight": 1}}))


def test_built_from_the_config_with_its_parameters(make_config):
    cfg = make_config(
        "+experiment=smoke",
        "rewards.critic.weight=0",
        "+rewards.validity.weight=0.5",
        "+rewards.validity.min_content_words=3",
    )
    funcs, weights = build_rewards(cfg)
    validity = funcs[[f.__name__ for f in funcs].index("validity")]
    assert weights[[f.__name__ for f in funcs].index("validity")] == 0.5
    assert validity(prompts=None, completions=["fur, whiskers", "fur, whiskers, eye"]) == [0.0, 1.0]
    with pytest.raises(KeyError, match="rewards.validity.*min_words"):
        active_rewards(OmegaConf.create({"validity": {"weight": 0.5, "min_words": 3}}))
