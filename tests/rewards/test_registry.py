import pytest
from omegaconf import OmegaConf

from coz_train.rewards import active_rewards, build_rewards, registered
from coz_train.rewards.registry import _REGISTRY, named, register, shared_model


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


def test_a_rewards_own_check_runs_for_active_rewards_only(make_config):
    seen = []

    def check(params, cfg):
        seen.append((params, cfg is not None))
        if params.get("level", 0) > 1:
            raise ValueError("rewards.checked.level must be <= 1")

    register("checked", params=("level",), check=check)(lambda params, cfg: None)
    try:
        active_rewards(rewards(checked={"weight": 0, "level": 5}, repetition={"weight": 1}))
        assert seen == []
        cfg = make_config()
        active_rewards(rewards(checked={"weight": 1, "level": 1}), cfg)
        assert seen == [({"level": 1}, True)]
        with pytest.raises(ValueError, match="level must be <= 1"):
            active_rewards(rewards(checked={"weight": 1, "level": 2}))
    finally:
        _REGISTRY.pop("checked")


def test_rewards_of_one_build_share_the_models_they_load(make_config):
    loads = []

    def build(params, cfg):
        model = shared_model("model", lambda: loads.append(1) or object())
        return named(lambda prompts=None, completions=None, model=None, **kw: [0.0], "uses_model", model=model)

    for name in ("first", "second"):
        register(name)(build)
    try:
        cfg = make_config("+experiment=smoke", "rewards.critic.weight=0", "+rewards.first.weight=1",
                          "+rewards.second.weight=1")
        funcs, _ = build_rewards(cfg)
        assert len(loads) == 1 and funcs[-1].params["model"] is funcs[-2].params["model"]
        build_rewards(cfg)
        assert len(loads) == 2  # a new build loads its own
        assert shared_model("model", lambda: "alone") == "alone"  # outside a build: just the load
    finally:
        _REGISTRY.pop("first")
        _REGISTRY.pop("second")
