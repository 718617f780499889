"""The model: vision encoder -> pixel-shuffle projector -> Llama-style language model."""

from mmllm.model.lm import LanguageModel
from mmllm.model.vision import VisionEncoder
from mmllm.model.vlm import VLM, ModelOutput, Projector

__all__ = ["VLM", "LanguageModel", "VisionEncoder", "Projector", "ModelOutput"]
