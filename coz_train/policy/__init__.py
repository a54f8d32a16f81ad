"""The prompt VLM: loading model + processor, the paper's LoRA adapter, freeze switches."""

from coz_train.policy.load import encode_chats, load_processor, load_vlm, torch_dtype
from coz_train.policy.lora import lora_config

__all__ = ["encode_chats", "load_processor", "load_vlm", "lora_config", "torch_dtype"]
