import pytest
from omegaconf import OmegaConf

from coz_train.rewards import active_rewards, build_rewards, registered


def rewards(**entries):
    return OmegaConf.create(entries)


def test_default_rewards_are_registered():
    assert {"critic", "phrase_exclusion", "repetition"} <= set(registered())


def test_paper_weights_in_default_config(make_config):
    cfg = make_config()
    assert {name: w for name, w, _ in active_rewards(cfg.rewards)} == {"critic": 1.0, "phrase_exclusion": 0.5, "repetition": 0.5}


def test_unknown_reward_and_parameter_are_named():
    with pytest.raises(KeyError, match="rewards.critc"):
        active_rewards(rewards(critc={"weight": 1.0}))
    with pytest.raises(KeyError, match="rewards.repetition.*ngram"):
        active_rewards(rewards(repetition={"weight": 1.0, "ngram": 3}))
    with pytest.raises(KeyError, match="weight"):
        active_rewards(rewards(repetition={"n": 3}))


def test_weight_zero_drops_a_reward_and_all_zero_is_an_error():
    active = active_rewards(rewards(repetition={"weight": 0.5}, phrase_exclusion={"weight": 0}))
    assert [name for name, _, _ in active] == ["repetition"]
    with pytest.raises(ValueError, match="weight 0"):
        active_rewards(rewards(repetition={"weight": 0}))


def test_built_functions_carry_names_and_parameters(make_config):
    cfg = make_config("+experiment=smoke", "rewards.critic.weight=0", "rewards.repetition.n=1")
    funcs, weights = build_rewards(cfg)
    assert [f.__name__ for f in funcs] == ["phrase_exclusion", "repetition"]
    assert weights == [0.5, 0.5]
    assert funcs[1](prompts=None, completions=["a a"]) == [pytest.approx(-0.5)]
