"""The prompt VLM's message, exactly as Chain-of-Zoom inference sends it.

The system turn carries the instruction and the user turn only the two images
[previous state, zoomed image], in the conversational form TRL's GRPOTrainer expects; TRL fills
the image placeholders from the sample's `images` column.
"""

from __future__ import annotations

SYSTEM_MESSAGE = (
    "The second image is a zoom-in of the first image. Based on this knowledge, what is in the "
    "second image? Give me a set of words."
)
SINGLE_IMAGE_SYSTEM_MESSAGE = "What is in this image? Give me a set of words."


def zoom_prompt(single_image: bool = False) -> list[dict]:
    """Conversational prompt with image placeholders: [system text, user: image(s)]."""
    system = SINGLE_IMAGE_SYSTEM_MESSAGE if single_image else SYSTEM_MESSAGE
    images = [{"type": "image", "text": None}] * (1 if single_image else 2)
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [dict(part) for part in images]},
    ]
