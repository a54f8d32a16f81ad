"""Zoom-pair data: image sources -> validated RGB images -> CoZ zoom chains -> cached samples."""

from coz_train.data.dataset import build_zoom_dataset, check_data_config
from coz_train.data.prompts import SYSTEM_MESSAGE, zoom_prompt

__all__ = ["SYSTEM_MESSAGE", "build_zoom_dataset", "check_data_config", "zoom_prompt"]
