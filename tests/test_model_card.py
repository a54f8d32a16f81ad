"""The model card's text and how the final adapter gets its card (the training runs in test_main.py and
test_resume.py check the cards a run writes)."""

from pathlib import Path

from coz_train.checkpoints import publish_adapter
from coz_train.model_card import MARK, command_line, model_card, run_card


def test_command_line_is_the_module_command_for_the_training_entry_point():
    argv = ["/site-packages/coz_train/__main__.py", "+experiment=smoke", "data.image_dir=/data/my images"]
    assert command_line(argv) == "python -m coz_train +experiment=smoke 'data.image_dir=/data/my images'"
    assert command_line(["train.py", "x=1"]) == "python train.py x=1"


def test_card_of_a_hub_base_model_names_it_in_the_metadata(make_config):
    cfg = make_config("+experiment=smoke", "policy.name_or_path=Qwen/Qwen2.5-VL-3B-Instruct", "policy.revision=abc123")
    card = model_card(cfg, None, 7, 12, final=False)
    assert "base_model: Qwen/Qwen2.5-VL-3B-Instruct" in card.split("---")[1]
    assert "policy.revision: `abc123`" in card and "checkpoint at step 7" in card and "GRPO steps: 7 / 20" in card
    assert "It loads `Qwen/Qwen2.5-VL-3B-Instruct` as the base model" not in card  # the official base: no warning
    tiny = model_card(make_config("+experiment=smoke"), None, 7, 12, final=False)
    assert "base_model:" not in tiny and "It loads `Qwen/Qwen2.5-VL-3B-Instruct` as the base model" in tiny


def test_the_published_adapter_gets_the_run_folders_card_without_the_run_folder_note(make_config, tmp_path: Path):
    card = model_card(make_config("+experiment=smoke"), None, 20, 12, final=True)
    (tmp_path / "README.md").write_text(run_card(card, 20, final=True))
    assert "This is a coz_train run folder" in (tmp_path / "README.md").read_text()
    saved = tmp_path / "adapter.partial"
    saved.mkdir()
    (saved / "README.md").write_text("---\nlibrary_name: peft\n---\n# Model Card for Model ID\n")  # PEFT's card
    publish_adapter(saved, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "README.md").read_text() == card and MARK in card
