"""Run by the official Chain-of-Zoom environment's Python (transformers 4.49, peft 0.15.2), not by pytest.

    python official_side.py load <base> <adapter> <inputs.safetensors> <out.safetensors>
        loads the adapter exactly as the official inference_coz.py does and writes the merged model's logits
    python official_side.py save <base> <adapter out> <inputs.safetensors> <out.safetensors>
        writes an adapter as the released one was written (PEFT 0.15.2, the released config) with known random
        weights, and the logits of the merged model
    python official_side.py base <base> - <inputs.safetensors> <out.safetensors>
        the base model's logits
Warnings raised while loading are written beside the logits (<out>.warnings.json).
"""

import json
import sys
import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

# the released checkpoint-10000's adapter_config.json
RELEASED = {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "bias": "none", "task_type": "CAUSAL_LM",
            "modules_to_save": [],
            "target_modules": r"^(model).*\.(q_proj|o_proj|gate_proj|down_proj|k_proj|up_proj|v_proj)$"}


def logits(model, inputs_file):
    inputs = load_file(inputs_file)
    with torch.no_grad():
        return model(**inputs).logits.float().contiguous()


def main(mode, base, adapter, inputs_file, out):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, torch_dtype=torch.float32)
        if mode == "base":
            pass
        elif mode == "load":
            vlm = PeftModel.from_pretrained(vlm, adapter)
            vlm = vlm.merge_and_unload()
        elif mode == "save":
            model = get_peft_model(vlm, LoraConfig(**RELEASED))
            generator = torch.Generator().manual_seed(7)
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.data = torch.randn(param.shape, generator=generator) * 0.2
            model.save_pretrained(adapter)
            vlm = model.merge_and_unload()
        else:
            raise SystemExit(f"unknown mode {mode}")
    vlm.eval()
    save_file({"logits": logits(vlm, inputs_file)}, out)
    with open(out + ".warnings.json", "w") as f:
        json.dump([str(w.message) for w in caught], f)


if __name__ == "__main__":
    main(*sys.argv[1:])
