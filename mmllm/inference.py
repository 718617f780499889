"""The Python API of a trained model: caption images, ask questions, chat, continue text.

    import mmllm
    vlm = mmllm.load("models/shapes-tiny")
    vlm.caption(["a.png", "b.png"])           # -> ["a small red circle at the top left.", ...]
    vlm.ask("a.png", "What colour is the circle?")
    vlm.chat([{"role": "user", "content": "<image>\\nWhat is this?"}], images=["a.png"])
    vlm.generate("Once upon a time")

Prompts go through the same processor (chat template, image preprocessing) as training, so what the model
sees in `ask` is exactly what it saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch
from PIL import Image

from data_pipelines.chat import question_conversation
from data_pipelines.collate import collate
from data_pipelines.images import load_image
from data_pipelines.special_tokens import CAPTION_INSTRUCTION
from mmllm.config import VLMConfig
from mmllm.errors import UsageError
from mmllm.generation import generate, stream
from mmllm.processing import processor_for

ImageLike = Union[str, Path, Image.Image, torch.Tensor]


@dataclass
class SamplingOptions:
    """How new tokens are chosen: greedy when temperature is 0."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


class VisionLanguageModel:
    """A model with its tokenizer and processor, ready to answer."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, device: str | torch.device | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config: VLMConfig = model.config
        self.processor = processor_for(self.config, tokenizer)
        if device is not None:
            self.model.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --------------------------------------------------------------------------------- tasks
    def caption(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16, **sampling) -> list[str]:
        """One caption per image, asked with the same instruction the caption data was trained with."""
        images = _as_list(images)
        return self.ask_many(images, [CAPTION_INSTRUCTION] * len(images), batch_size=batch_size, **sampling)

    def ask(self, image: ImageLike | None, question: str, **sampling) -> str:
        """The answer to one question about one image (or none)."""
        return self.ask_many([image], [question], **sampling)[0]

    def ask_many(self, images: Sequence[ImageLike | None], questions: Sequence[str], batch_size: int = 16,
                 **sampling) -> list[str]:
        """Answers to single-turn questions, one image each, batched."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        conversations = [question_conversation(q, with_image=im is not None) for im, q in zip(images, questions)]
        image_lists = [[im] if im is not None else [] for im in images]
        return self._answer_batches(conversations, image_lists, batch_size, sampling)

    def chat(self, messages: list[dict[str, str]], images: Sequence[ImageLike] = (), **sampling) -> str:
        """The assistant's next turn; `<image>` markers in user turns take `images` in order."""
        return self._answer_batches([messages], [list(images)], 1, sampling)[0]

    def stream_chat(self, messages: list[dict[str, str]], images: Sequence[ImageLike] = (),
                    **sampling) -> Iterator[str]:
        """The assistant's next turn as text pieces, yielded as tokens are produced."""
        batch = self._prompt_batch([messages], [list(images)])
        yield from self._stream_text(batch, sampling)

    def generate(self, prompt: str, **sampling) -> str:
        """Plain-text continuation of `prompt` (no chat template), for language-model checks."""
        return "".join(self.stream_generate(prompt, **sampling))

    def stream_generate(self, prompt: str, **sampling) -> Iterator[str]:
        encoded = self.processor.encode_text(prompt, add_end_of_text=False)
        batch = collate([encoded], pad_id=self.config.pad_token_id, padding_side="left")
        yield from self._stream_text(batch, sampling)

    # ------------------------------------------------------------------------------- plumbing
    def _prompt_batch(self, conversations: list[list[dict]], image_lists: list[list[ImageLike]]) -> dict:
        encoded = [
            self.processor.encode_prompt(conversation, [_to_pil(im) for im in images])
            for conversation, images in zip(conversations, image_lists)
        ]
        return collate(encoded, pad_id=self.config.pad_token_id, padding_side="left")

    def _answer_batches(self, conversations, image_lists, batch_size: int, sampling: dict) -> list[str]:
        options = SamplingOptions(**sampling)
        answers: list[str] = []
        for start in range(0, len(conversations), batch_size):
            batch = self._prompt_batch(conversations[start:start + batch_size], image_lists[start:start + batch_size])
            new_tokens = self._generate(batch, options)
            answers.extend(self.processor.decode(row).strip() for row in new_tokens)
        return answers

    @torch.inference_mode()
    def _generate(self, batch: dict, options: SamplingOptions) -> list[list[int]]:
        was_training = self.model.training
        self.model.eval()
        try:
            tokens = generate(self.model, **self._model_inputs(batch), **vars(options))
        finally:
            self.model.train(was_training)
        return tokens

    def _stream_text(self, batch: dict, sampling: dict) -> Iterator[str]:
        """Decode incrementally: yield only the text that the newest token completed."""
        options = SamplingOptions(**sampling)
        self.model.eval()
        ids: list[int] = []
        shown = ""
        with torch.inference_mode():
            for step_tokens in stream(self.model, **self._model_inputs(batch), **vars(options)):
                ids.append(step_tokens[0])  # {row: token}: one prompt, row 0
                text = self.processor.decode(ids)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                yield text[len(shown):]
                shown = text

    def _model_inputs(self, batch: dict) -> dict:
        device = self.device
        keys = ("input_ids", "attention_mask", "pixel_values", "image_counts")
        inputs = {k: batch[k].to(device) for k in keys if batch.get(k) is not None}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        return inputs


def load(path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None) -> VisionLanguageModel:
    """Load an exported model folder (safetensors + JSON, nothing unpickled) or a Lightning checkpoint."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model {path} does not exist")
    if path.is_dir():
        from mmllm.model_folder import load_model_folder

        model, tokenizer, _ = load_model_folder(path)
    else:
        from mmllm.checkpoint_export import model_from_checkpoint

        model, tokenizer, _ = model_from_checkpoint(path)
    device = resolve_device(device)
    model.to(device=device, dtype=resolve_dtype(dtype, device))
    model.eval()
    return VisionLanguageModel(model, tokenizer)


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on the CPU (bf16 matmuls are slow on CPUs without bf16 units), bf16 on GPUs, unless asked."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {sorted(names)}")
    return names[dtype]


def _as_list(images) -> list:
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _to_pil(image: ImageLike) -> Image.Image:
    """Paths and PIL images go through the data pipeline's loader; a (3, H, W) tensor in [0, 1] is converted."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be (3, H, W) with values in [0, 1], got {tuple(image.shape)}")
        array = (image.detach().float().clamp(0, 1).expand(3, -1, -1) * 255).round().byte()
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())
    if isinstance(image, (str, Path)) and not Path(image).is_file():
        raise UsageError(f"image {image} does not exist")
    return load_image(image)

