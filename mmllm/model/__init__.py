"""The model: vision encoder -> pixel-shuffle projector -> Llama-style language model."""

from mmllm.model.lm import LanguageModel
from mmllm.model.projector import Projector
from mmllm.model.vision import VisionEncoder
from mmllm.model.vlm import VLM, ModelOutput

__all__ = ["VLM", "LanguageModel", "VisionEncoder", "Projector", "ModelOutput"]
