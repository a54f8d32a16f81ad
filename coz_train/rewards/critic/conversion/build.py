"""Writing the converted folder: weights, tokenizer, processor (see `coz_train.rewards.critic.conversion.convert`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from coz_train.rewards.critic.conversion.convert import (
    END_OF_TURN,
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    SYSTEM_MESSAGES,
    chat_template,
    convert_state_dict,
    read_hub_weights,
    text_config,
    vision_config,
)
from coz_train.rewards.critic.tiling import MEAN, STD, TILE

log = logging.getLogger(__name__)

VIDEO = "<video>"


def fast_tokenizer(folder: Path) -> Any:
    """InternLM2's sentencepiece BPE as a `PreTrainedTokenizerFast`, with the checkpoint's added tokens.

    As InternLM2's own slow->fast conversion: BPE with byte fallback, spaces as "▁" (prefixed only when
    the model adds a dummy prefix), BOS added in front, the added tokens (chat, image) matched whole.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    model_file = folder / "tokenizer.model"
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} is missing: the InternLM2 tokenizer is a sentencepiece model.")
    extractor = SentencePieceExtractor(str(model_file))
    proto = extractor.proto
    if proto.trainer_spec.model_type != 2:
        raise ValueError(f"{model_file} is not a BPE sentencepiece model (InternLM2's tokenizer is).")
    parts = extractor.extract(BPE)
    vocab, merges = parts["vocab"], parts["merges"]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    added = {int(i): entry for i, entry in config.get("added_tokens_decoder", {}).items()}
    for piece_id, piece in enumerate(proto.pieces):
        if piece.type == 4 and piece_id not in added:  # sentencepiece user-defined symbols are whole tokens too
            added[piece_id] = {"content": piece.piece, "special": True}
    for token_id, entry in added.items():
        if token_id >= len(vocab):
            vocab[entry["content"]] = token_id
    tokenizer = Tokenizer(BPE(vocab, merges, unk_token=proto.trainer_spec.unk_piece, fuse_unk=True, byte_fallback=True))
    dummy = proto.normalizer_spec.add_dummy_prefix
    tokenizer.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("▁")] if dummy else []) + [normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(content=" ", left=1)] if dummy else []))
    tokenizer.add_special_tokens([AddedToken(added[i]["content"], special=added[i].get("special", True),
                                             normalized=False) for i in sorted(added)])
    bos = config.get("bos_token", "<s>")
    if config.get("add_bos_token", True):
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    for token in (IMG_START, IMG_END, IMG_CONTEXT, END_OF_TURN):
        if tokenizer.token_to_id(token) is None:
            raise ValueError(f"The checkpoint's tokenizer has no '{token}' token: not an InternVL2.5 checkpoint.")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=config.get("eos_token", "</s>"),
        unk_token=config.get("unk_token", "<unk>"), pad_token=config.get("pad_token", "</s>"),
        clean_up_tokenization_spaces=False, model_max_length=config.get("model_max_length", 16384),
        # InternVLProcessor reads these names. InternVL2.5 has no video token: "<video>" gets an id past the
        # embeddings, never produced by the chat template (a prompt containing it is refused by the processor).
        extra_special_tokens={"start_image_token": IMG_START, "end_image_token": IMG_END,
                              "context_image_token": IMG_CONTEXT, "video_token": VIDEO},
    )


def processor(tokenizer: Any, hub_config: dict[str, Any], max_tiles: int) -> Any:
    from transformers import GotOcr2ImageProcessorPil, InternVLProcessor, InternVLVideoProcessor

    vit = hub_config["vision_config"]
    tokens_per_tile = int((vit["image_size"] // vit["patch_size"]) ** 2 * hub_config.get("downsample_ratio", 0.5) ** 2)
    template = hub_config.get("template", "internvl2_5")
    if template not in SYSTEM_MESSAGES:
        raise ValueError(f"Conversation template '{template}' is not known here (only {sorted(SYSTEM_MESSAGES)}).")
    system_message = hub_config.get("system_message") or SYSTEM_MESSAGES[template]  # as InternVLChatModel picks it
    images = GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=max_tiles,
        image_mean=list(MEAN), image_std=list(STD), do_convert_rgb=True)
    return InternVLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=InternVLVideoProcessor(),
                             image_seq_length=tokens_per_tile,
                             chat_template=chat_template(system_message))


def convert(folder: Path, out: Path, max_tiles: int = 6, dtype: str | None = None) -> Path:
    """Convert the InternVL2.5 checkpoint in `folder` into a native `-hf` folder `out`."""
    from transformers import GenerationConfig, InternVLConfig, InternVLForConditionalGeneration

    hub_config = json.loads((folder / "config.json").read_text())
    if hub_config.get("model_type") != "internvl_chat":
        raise ValueError(f"{folder}/config.json has model_type '{hub_config.get('model_type')}', not 'internvl_chat' "
                         "(an InternVL2/2.5 checkpoint in the hub layout).")
    llm = hub_config["llm_config"]
    tokenizer = fast_tokenizer(folder)
    config = InternVLConfig(
        vision_config=vision_config(hub_config["vision_config"]), text_config=text_config(llm),
        image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT),
        image_seq_length=int((hub_config["vision_config"]["image_size"] // hub_config["vision_config"]["patch_size"])
                             ** 2 * hub_config.get("downsample_ratio", 0.5) ** 2),
        downsample_ratio=hub_config.get("downsample_ratio", 0.5), projector_hidden_act="gelu",
        vision_feature_layer=hub_config.get("select_layer", -1), vision_feature_select_strategy="default",
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
    )
    if hub_config.get("ps_version", "v2") != "v2":
        raise ValueError(f"ps_version '{hub_config.get('ps_version')}': the native model implements pixel shuffle v2.")
    weights = convert_state_dict(read_hub_weights(folder), llm)
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"Conversion left tensors unmatched: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor(tokenizer, hub_config, max_tiles).save_pretrained(out)
    log.info("Converted %s -> %s (%d tensors, max_tiles=%d)", folder, out, len(weights), max_tiles)
    return out
