"""The perf switches start where the libraries offer what they need, and refuse, naming switch and seam, where
a library changed it: each seam checked against the installed releases and against a changed one."""

import json
import re
from pathlib import Path

import peft.tuners.lora as peft_lora
import pytest
import transformers
import trl.trainer.grpo_trainer as grpo
import trl.trainer.utils as trl_utils
from omegaconf import OmegaConf
from transformers import GenerationMixin
from transformers.cache_utils import DynamicLayer
from transformers.generation.configuration_utils import CompileConfig
from trl import GRPOTrainer

from coz_train.conf_dir import config_dir
from coz_train.config import PerfConfig
from coz_train.perf import capabilities
from coz_train.perf.capabilities import SEAMS, SWITCHES, by_switch, check_capabilities, main, seam_report

FAST = OmegaConf.load(Path(config_dir()) / "perf" / "fast.yaml")


def only(*switches):
    return {name: name in switches for name in SWITCHES}


def test_every_seam_holds_on_the_installed_versions():
    report = seam_report()
    assert [s.name for s in report if not s.holds] == [], [s.why for s in report if not s.holds]
    assert len(report) == len(SEAMS) and len({seam.name for seam in SEAMS}) == len(SEAMS)
    assert all(statuses for statuses in by_switch(report).values()), "every switch names its seams"
    check_capabilities(FAST)
    check_capabilities(OmegaConf.merge(FAST, {"compiled_decode": True}))


def test_the_switches_are_the_configs():
    fields = {name for name, kind in PerfConfig.__annotations__.items() if kind in (bool, "bool")}
    assert set(SWITCHES) == fields
    assert {s for seam in SEAMS for s in seam.switches} == set(SWITCHES)


# -- changed libraries: each seam fails for its own reason --------------------------------------------------------


class Backbone:
    """A Qwen-VL backbone as the switches need it."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                pixel_values=None, image_grid_thw=None, mm_token_type_ids=None, **kwargs):
        return self.get_image_features(pixel_values, image_grid_thw).pooler_output

    def get_rope_index(self, input_ids, mm_token_type_ids=None, image_grid_thw=None, attention_mask=None, **kwargs):
        pass

    def get_image_features(self, pixel_values, image_grid_thw, **kwargs):
        pass


class OldBackbone(Backbone):
    """As transformers < 5.24 writes it: the KV cache keyword is past_key_values."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                pixel_values=None, image_grid_thw=None, mm_token_type_ids=None, **kwargs):
        return self.get_image_features(pixel_values, image_grid_thw).pooler_output


class BackboneWithoutRopeTypes(Backbone):
    def get_rope_index(self, input_ids, image_grid_thw=None, attention_mask=None):
        pass


class BackboneEncodingInline(Backbone):
    """get_image_features is there, but forward runs the vision tower itself: a cache on it would never be asked."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                pixel_values=None, image_grid_thw=None, mm_token_type_ids=None, **kwargs):
        return self.visual(pixel_values, grid_thw=image_grid_thw)


class GeneratorWithoutRopeDeltas:
    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        return model_kwargs["position_ids"]


class ProcessorWithoutTokenizer:
    @classmethod
    def get_attributes(cls):
        return ["image_processor"]

    def __call__(self, images=None, text=None, **kwargs):
        return {}


def prepare_cache_old(self, generation_config, model_kwargs, *args):
    user_defined_cache = model_kwargs.get("past_key_values")
    return user_defined_cache


def fused_head_through_model(model, temperature=1.0):
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
    return forward


def rollouts_in_batches(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
    return self.model.generate_batch(prompt_ids)


def prepare_inputs_in_order(self, generation_batch):
    return generation_batch


def score_with_image_inputs_only(self, inputs):
    return self.processing_class.image_processor(images=[x["images"] for x in inputs])


class LoraLayerWithoutUnmerge:
    merged = False
    active_adapters = ("default",)

    def merge(self, safe_merge=False, adapter_names=None):
        pass

    def get_base_layer(self):
        pass


class OldStaticCache:
    def __init__(self, config, max_batch_size, max_len=None):
        pass

    def reset(self):
        pass


CHANGES = {  # seam: (change the library, switch, what the error says)
    "backbone forward(cache=)": (lambda mp: mp.setattr(transformers, "Qwen2_5_VLModel", OldBackbone), "group_prefix",
                                 r"OldBackbone.forward takes the KV cache as `past_key_values`, not `cache`"),
    "backbone get_rope_index": (lambda mp: mp.setattr(transformers, "Qwen2VLModel", BackboneWithoutRopeTypes),
                                "critic_prefix", r"get_rope_index has no `mm_token_type_ids` parameter"),
    "DynamicCache(config=) rows": (lambda mp: mp.delattr(DynamicLayer, "batch_select_indices"), "group_prefix",
                                   r"DynamicCache layers DynamicLayer have no batch_select_indices"),
    "StaticCache(config=, max_cache_len=)": (lambda mp: mp.setattr(transformers, "StaticCache", OldStaticCache),
                                             "rollout_prefix", r"StaticCache has no `max_cache_len`"),
    "generate(cache=)": (lambda mp: mp.setattr(GenerationMixin, "_prepare_cache_for_generation", prepare_cache_old),
                         "rollout_prefix", r"generate does not take a given KV cache as `cache`"),
    "generate reads rope_deltas": (lambda mp: mp.setattr(transformers, "Qwen2VLForConditionalGeneration",
                                                         GeneratorWithoutRopeDeltas),
                                   "rollout_prefix", r"no longer reads `self.model.rope_deltas`"),
    "TRL fused LM head -> backbone": (lambda mp: mp.setattr(trl_utils, "add_fused_lm_head", fused_head_through_model),
                                      "group_prefix", r"add_fused_lm_head no longer contains `\"base_model\"`"),
    "TRL rollouts -> model.generate, log-probs -> fused head": (
        lambda mp: mp.setattr(GRPOTrainer, "_generate_single_turn", rollouts_in_batches), "rollout_prefix",
        r"_generate_single_turn no longer contains `unwrapped_model.generate\(`"),
    "backbone get_image_features": (lambda mp: mp.setattr(transformers, "Qwen2_5_VLModel", BackboneEncodingInline),
                                    "vision_cache", r"BackboneEncodingInline.forward no longer contains "
                                                    r"`self.get_image_features\(`, `pooler_output`"),
    "Qwen2.5-VL processor parts": (lambda mp: mp.setattr(transformers, "Qwen2_5_VLProcessor",
                                                         ProcessorWithoutTokenizer),
                                   "text_cache", r"Qwen2_5_VLProcessor has no tokenizer part"),
    "processor call, per row": (lambda mp: mp.setattr(GRPOTrainer, "_generate_and_score_completions",
                                                       score_with_image_inputs_only), "dedup_prompts",
                                r"_generate_and_score_completions no longer contains `self.processing_class\(images="),
    "TRL shuffle_sequence_dict": (lambda mp: mp.setattr(GRPOTrainer, "_prepare_inputs", prepare_inputs_in_order),
                                  "group_batches", r"_prepare_inputs no longer contains `shuffle_sequence_dict\(`"),
    "PEFT LoraLayer merge": (lambda mp: mp.setattr(peft_lora, "LoraLayer", LoraLayerWithoutUnmerge),
                             "merge_adapters_for_generation", r"peft's LoraLayer has no unmerge"),
    "CompileConfig / GenerationConfig": (lambda mp: mp.delattr(CompileConfig, "_compile_all_devices"),
                                         "compiled_decode", r"CompileConfig has no _compile_all_devices"),
}


@pytest.mark.parametrize("seam", list(CHANGES))
def test_a_changed_seam_stops_its_switches_naming_switch_and_seam(monkeypatch, seam):
    change, switch, why = CHANGES[seam]
    change(monkeypatch)
    with pytest.raises(RuntimeError) as refused:
        check_capabilities(only(switch))
    message = str(refused.value)
    assert message.startswith(f"perf.{switch} need library internals that changed in this environment (transformers ")
    assert f"- perf.{switch}: seam '{seam}': " in message
    assert f"Set perf.{switch}=false, or install the tested versions with pip install -c .ci/constraints.txt -e ." \
        in message
    assert re.search(why, message), message
    others = [s for s in SWITCHES if not any(s in seam_.switches for seam_ in SEAMS if seam_.name == seam)]
    check_capabilities(only(*others))  # the switches that do not use it still start


def test_the_old_cache_keyword_stops_every_prefix_switch_and_only_those(monkeypatch):
    monkeypatch.setattr(transformers, "Qwen2_5_VLModel", OldBackbone)
    monkeypatch.setattr(GenerationMixin, "_prepare_cache_for_generation", prepare_cache_old)
    with pytest.raises(RuntimeError) as refused:
        check_capabilities(FAST)
    message = str(refused.value)
    assert message.startswith("perf.group_prefix, perf.critic_prefix, perf.rollout_prefix need library internals")
    assert "- perf.group_prefix, perf.critic_prefix, perf.rollout_prefix: seam 'backbone forward(cache=)'" in message
    assert "- perf.rollout_prefix: seam 'generate(cache=)'" in message
    assert "Set perf.group_prefix=false, perf.critic_prefix=false, perf.rollout_prefix=false, or install" in message
    assert f"trl {capabilities.installed_versions()['trl']}" in message
    check_capabilities(OmegaConf.merge(FAST, {"group_prefix": False, "critic_prefix": False,
                                              "rollout_prefix": False}))
    check_capabilities(only())  # perf=plain: nothing replaced, nothing checked


def test_a_missing_function_or_an_error_inside_a_check_is_a_changed_seam(monkeypatch):
    monkeypatch.delattr(grpo, "shuffle_sequence_dict")
    (status,) = seam_report(("group_batches",))
    assert not status.holds and status.why == "trl.trainer.grpo_trainer has no shuffle_sequence_dict"
    monkeypatch.delattr(trl_utils, "add_fused_lm_head")
    assert "trl.trainer.utils has no add_fused_lm_head" in str(pytest.raises(RuntimeError, check_capabilities,
                                                                           only("group_prefix")).value)

    def broken():
        raise ImportError("cannot import name 'DynamicCache'")

    monkeypatch.setattr(capabilities, "SEAMS", (capabilities.Seam("a seam", ("load_once",), broken),))
    (status,) = seam_report()
    assert status.why == "ImportError: cannot import name 'DynamicCache'"


def test_the_report_command_writes_every_seams_status(tmp_path, capsys):
    assert main(["--json", str(tmp_path / "seams.json")]) == 0
    written = json.loads((tmp_path / "seams.json").read_text())
    assert [s["name"] for s in written["seams"]] == [seam.name for seam in SEAMS]
    assert all(s["holds"] for s in written["seams"]) and written["versions"]["transformers"]
    assert "backbone forward(cache=)" in capsys.readouterr().out
