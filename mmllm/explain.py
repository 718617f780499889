"""Where an answer looked: the relevance of each image token to the answer, drawn as a heatmap over the image.

Relevance is gradient x input on the image tokens, against a blank image: for the answer's log-likelihood L
(the assistant turn as the model would be trained on it), each image token's share is |sum_d dL/de_d (e - b)_d|
over its embedding e, where b is that token's embedding for a blank image (what an empty patch contributes is
not relevance). We use it
rather than attention rollout because it measures what the answer depends on through every layer, residual
paths included, and needs no attention weights: the fused SDPA kernels never materialise them, and rollout
would need a second attention path. One backward pass per answer; the shares sum to 1, so 1 / tokens_per_image
is what a model that looked nowhere in particular would give each token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from data_pipelines.batching import collate
from data_pipelines.chat.conversation import question_conversation
from data_pipelines.chat.special_tokens import IMAGE_MARKER


@dataclass
class Explanation:
    """An answer and where it looked: relevance (rows, cols) per image token, summing to 1."""

    question: str
    answer: str
    relevance: torch.Tensor
    image: Image.Image  # the image as the model saw it (resized, normalisation undone)

    def heatmap(self, size: int = 384) -> Image.Image:
        """The image at size x size, and beside it the relevance as a red-to-yellow overlay with each token's
        share (the overlay changes colours, so the plain image stays in view)."""
        rows, cols = self.relevance.shape
        base = self.image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        heat = (self.relevance / self.relevance.max().clamp(min=1e-12)).float()
        heat = torch.nn.functional.interpolate(heat[None, None], size=(size, size), mode="bilinear",
                                               align_corners=False)[0, 0].clamp(0, 1)  # (size, size) in [0, 1]
        pixels = torch.from_numpy(np.asarray(base, dtype=np.float32))  # (size, size, 3)
        colour = torch.stack([torch.full_like(heat, 255.0), 255.0 * heat, torch.zeros_like(heat)], dim=-1)
        alpha = 0.65 * heat[..., None]
        blended = (pixels * (1 - alpha) + colour * alpha).round().clamp(0, 255).to(torch.uint8)
        overlay = Image.fromarray(blended.numpy(), "RGB")
        draw = ImageDraw.Draw(overlay)
        for r in range(rows):
            for c in range(cols):
                x0, y0 = c * size / cols, r * size / rows
                draw.rectangle((x0, y0, x0 + size / cols, y0 + size / rows), outline=(90, 90, 90))
                draw.text((x0 + 3, y0 + 2), f"{100 * float(self.relevance[r, c]):.0f}%", fill=(0, 0, 0))
        picture = Image.new("RGB", (2 * size + 8, size), (255, 255, 255))
        picture.paste(base, (0, 0))
        picture.paste(overlay, (size + 8, 0))
        return picture

    def save(self, path: str | Path, size: int = 384) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.heatmap(size).save(path)
        return path


def explain_answer(vlm, image, conversation: list[dict], answer: str) -> Explanation:
    """The relevance of each image token to `answer` as the next assistant turn of `conversation` (one image)."""
    processor, model = vlm.processor, vlm.model
    sample = processor.encode_conversation([*conversation, {"role": "assistant", "content": answer}], [image])
    batch = collate([sample], pad_id=vlm.config.pad_token_id)
    inputs = {key: batch[key].to(vlm.device) for key in ("input_ids", "attention_mask", "prefix_mask", "labels",
                                                          "image_counts") if batch.get(key) is not None}
    pixel_values = batch["pixel_values"].to(vlm.device, vlm.dtype)
    with torch.enable_grad():
        image_embeds = model.encode_images(pixel_values).detach().requires_grad_(True)  # (N, tokens, dim)
        output = model(**inputs, pixel_values=pixel_values, image_embeds=image_embeds)
        (gradient,) = torch.autograd.grad(-output.loss, image_embeds)  # d log-likelihood / d image tokens
    with torch.no_grad():  # the baseline: the same image tokens for a blank image (the normalisation's mean)
        blank = model.encode_images(torch.zeros_like(pixel_values))
    # The last block is the whole image (N == 1 unless the image was split into tiles, which come first).
    relevance = (gradient * (image_embeds.detach() - blank)).sum(-1).abs()[-1].float()  # (tokens_per_image,)
    relevance = relevance / relevance.sum().clamp(min=1e-12)
    side = math.isqrt(relevance.numel())
    question = conversation[-1]["content"].replace(IMAGE_MARKER, "").strip()
    return Explanation(question, answer, relevance.view(side, side).cpu(),
                       _as_seen(pixel_values[-1].float().cpu(), vlm.config))


def explain_question(vlm, image, question: str, answer: str | None = None, **sampling) -> Explanation:
    """`ask` with an explanation: the model's answer (or a given one) and where it looked."""
    if answer is None:
        answer = vlm.ask(image, question, **sampling)
    return explain_answer(vlm, image, question_conversation(question), answer)


def _as_seen(pixels: torch.Tensor, config) -> Image.Image:
    """(3, H, W) normalised model input -> the RGB picture it shows."""
    mean = torch.tensor(config.image_mean)[:, None, None]
    std = torch.tensor(config.image_std)[:, None, None]
    rgb = (pixels * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)  # (3, H, W)
    return Image.fromarray(rgb.permute(1, 2, 0).numpy(), "RGB")
