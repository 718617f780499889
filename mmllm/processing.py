"""The processor for a model: data_pipelines' Processor shaped by the model config.

Training (the data module) and inference (`mmllm ask`) both build their processor here, from the same
config fields, so image size, normalisation, resize policy and image-token count can never disagree.
"""

from __future__ import annotations

from typing import Any

from data_pipelines.processor import Processor, SpecialIds
from mmllm.config import VLMConfig


def processor_for(config: VLMConfig, tokenizer: Any, max_length: int | None = None) -> Processor:
    return Processor(
        tokenizer,
        image_size=config.vision.image_size if config.reads_images else None,
        tokens_per_image=config.tokens_per_image,
        image_mean=config.image_mean,
        image_std=config.image_std,
        resize=config.resize,
        longest_edge=config.longest_edge,
        max_length=max_length or config.lm.max_seq_len,
        image_markup=config.image_markup,
        image_splitting=config.image_splitting,
        chat_template=config.chat_template,
        special_ids=SpecialIds(config.image_token_id, config.pad_token_id, list(config.eos_token_ids)),
    )
