import pytest

from coz_train.hub import ModelNotAvailableError, resolve_model
from coz_train.tiny.models import TINY_VERSION


def test_missing_local_folder_names_the_key(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"policy.name_or_path=.*no config.json"):
        resolve_model(str(tmp_path / "nothing"), "policy.name_or_path")


def test_hub_id_offline_fails_at_once_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as err:
        resolve_model("Qwen/Qwen2.5-VL-3B-Instruct", "policy.name_or_path")
    message = str(err.value)
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in message and "+experiment=smoke" in message and "local copy" in message


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ModelNotAvailableError, match="cannot be reached"):
        resolve_model("OpenGVLab/InternVL2_5-8B", "critic.name_or_path")


def test_tiny_models_build_into_a_loadable_folder():
    path = resolve_model("tiny:qwen2_5_vl@3", "policy.name_or_path")
    assert path.endswith(f"qwen2_5_vl-seed3-v{TINY_VERSION}")
    assert resolve_model(path, "policy.name_or_path") == path
    with pytest.raises(ValueError, match="Unknown tiny model"):
        resolve_model("tiny:llama", "policy.name_or_path")
