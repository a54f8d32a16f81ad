"""An offline byte-level BPE tokenizer with Qwen's special tokens and a Qwen2-VL chat template.

Real runs load the model's own tokenizer from the hub or a local folder. Tests and the smoke
experiment cannot download one, so this module trains a tiny tokenizer on an in-code corpus
(~0.1 s) that speaks the same chat format: `<|im_start|>role ... <|im_end|>` turns and
`<|vision_start|><|image_pad|><|vision_end|>` per image.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Qwen2's pre-tokenizer pattern: contractions, words, single digits, punctuation runs, spaces.
QWEN_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The structure of Qwen2-VL's template: a default system turn, one vision block per image part.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The second image is a zoom-in of the first image. Based on this knowledge, what is in the "
    "second image? Give me a set of words.",
    "What is in this image? Give me a set of words.",
    "You are a helpful assistant. Rate how accurately and usefully the prompt describes the "
    "zoomed image given the wider view. Answer with a single integer score from 0 to 100.",
    "fur, whiskers, eye, texture, grass, sky, clouds, brick wall, stone, leaves, water, sand, "
    "metal, fabric, skin, hair, feathers, wood grain, rust, paint, road, window, tree bark.",
    "red green blue yellow white black brown grey orange purple pink golden silver dark light",
    "close-up detail of a surface, fine structure, sharp edges, soft shadows, high resolution.",
    "0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100 Score: 85. score 42",
    "first image second image left right top bottom zoomed in view upper lower corner center",
]


def _byte_level(model: models.Model) -> Tokenizer:
    """A tokenizer around a BPE model with Qwen2's pre-tokenizer and the byte-level decoder."""
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _qwen_style(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A fast tokenizer with Qwen's end, padding and vision tokens and the Qwen2-VL chat template."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
    )
    fast.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return fast


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the in-code corpus and wrap it as a Qwen-style fast tokenizer."""
    tok = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return _qwen_style(tok)


def _letter_words(length: int) -> Iterator[str]:
    """Lower-case words of `length` letters in alphabetical order."""
    return ("".join(chars) for chars in itertools.product(string.ascii_lowercase, repeat=length))


def build_full_vocabulary_tokenizer(ordinary_tokens: int, special_tokens: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE with a real model's vocabulary size and its special tokens at their real ids.

    The ordinary tokens are the 256 byte symbols and then space-led lower-case words (" a" .. " z",
    " aa" .. " zzz", then four-letter words in alphabetical order) up to `ordinary_tokens`; the special
    tokens follow from id `ordinary_tokens` on, in order. Each word has the merges that build it from its
    letters left to right, so the text a random model writes (a sequence of such words) encodes back to
    as many tokens as it had, as a real tokenizer's output does; other text goes to shorter words and bytes.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    space = "\u0120"  # the byte-level symbol of " "
    merges: list[tuple[str, str]] = []
    length = 1
    while len(vocab) < ordinary_tokens:
        for word in _letter_words(length):
            if len(vocab) == ordinary_tokens:
                break
            token = space + word
            merges.append((token[:-1], token[-1]))
            vocab[token] = len(vocab)
        length += 1
    tok = _byte_level(models.BPE(vocab=vocab, merges=merges))
    tok.add_special_tokens(special_tokens)
    return _qwen_style(tok)
