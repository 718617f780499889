"""The vision-language model: ViT -> projector -> image embeddings spliced into the LM's token embeddings.

Each image is `tokens_per_image` consecutive `image_token_id`s in `input_ids`; the projector output of image
i (reading order across the batch) replaces the i-th such block of embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmllm.config import VLMConfig
from mmllm.model.attention_mask import build_attention_mask, default_position_ids
from mmllm.model.lm import LanguageModel
from mmllm.model.projector import Projector
from mmllm.model.vision import VisionEncoder


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab)
    loss: torch.Tensor | None = None  # mean cross-entropy over supervised tokens
    token_losses: torch.Tensor | None = None  # (B, T-1): loss of predicting token t+1 at t, 0 if unsupervised


class VLM(nn.Module):
    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.projector = Projector(config)
        self.lm = LanguageModel(config.lm)
        self.vision.init_weights()
        self.projector.init_weights()
        self.lm.init_weights()

    # ---- inputs -> embeddings -------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> image token embeddings (N, tokens_per_image, lm.dim).

        Without gradients (generation, evaluation) an image that occurs several times in the batch is
        encoded once: VQA asks several questions about each image, and the ViT is most of a prompt's cost.
        """
        if torch.is_grad_enabled() or pixel_values.size(0) < 2:
            return self.projector(self.vision(pixel_values))
        unique, inverse = torch.unique(pixel_values.flatten(1), dim=0, return_inverse=True)  # (U, 3*H*W), (N,)
        if unique.size(0) == pixel_values.size(0):
            return self.projector(self.vision(pixel_values))
        features = self.projector(self.vision(unique.view(-1, *pixel_values.shape[1:])))
        return features[inverse]

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, lm.dim) token embeddings with each image's tokens written in place.

        image_embeds (N, tokens_per_image, lm.dim), when given, are used instead of encoding pixel_values
        (mmllm.explain takes gradients with respect to them).
        """
        B, T = input_ids.shape
        max_len = self.config.lm.max_seq_len
        if T > max_len:
            raise ValueError(f"sequence of {T} tokens is {T - max_len} longer than max_seq_len {max_len}")
        embeds = self.lm.embed_tokens(input_ids)  # (B, T, dim)
        is_image = input_ids == self.config.image_token_id  # (B, T)
        self._check_image_tokens(is_image, pixel_values, image_counts)
        if pixel_values is None or pixel_values.size(0) == 0:
            return embeds
        if image_embeds is None:
            image_embeds = self.encode_images(pixel_values)  # (N, tokens_per_image, dim)
        # masked_scatter fills the True positions in row-major order: image i lands in the i-th block.
        return embeds.masked_scatter(is_image[..., None], image_embeds.to(embeds.dtype))

    def _check_image_tokens(
        self, is_image: torch.Tensor, pixel_values: torch.Tensor | None, image_counts: torch.Tensor | None
    ) -> None:
        per_image = self.config.tokens_per_image
        n_images = 0 if pixel_values is None else pixel_values.size(0)
        tokens_per_row = is_image.sum(dim=1)  # (B,)
        found = int(tokens_per_row.sum())
        if found != n_images * per_image:
            raise ValueError(
                f"found {found} image tokens but {n_images} images need {n_images * per_image} "
                f"({per_image} per image)"
            )
        if image_counts is None:
            return
        if int(image_counts.sum()) != n_images:
            raise ValueError(f"image_counts add up to {int(image_counts.sum())} but there are {n_images} images")
        expected = image_counts.to(tokens_per_row.device) * per_image
        bad = (tokens_per_row != expected).nonzero()
        if len(bad):
            row = int(bad[0])
            raise ValueError(
                f"sample {row} has {int(tokens_per_row[row])} image tokens but its {int(image_counts[row])} "
                f"images need {int(expected[row])} ({per_image} per image)"
            )

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sources: list[str] | None = None,  # part of the batch; the trainer groups token_losses by it
        image_embeds: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Full-sequence forward (training, evaluation; generation's reference). Shapes:

        input_ids (B, T); pixel_values (N, 3, H, W), every image of the batch in reading order; image_counts
        (B,) images per sample (checked against the placeholders when given); attention_mask (B, T) 1 on real
        tokens; position_ids (B, T), default from segment_ids or attention_mask; segment_ids (B, T) 1..k per
        packed sample, 0 on padding; prefix_mask (B, T) bidirectional prompt, used only in prefix mode;
        labels (B, T), -100 where unsupervised, shifted here (logits[:, t] predicts labels[:, t + 1]);
        image_embeds: see `embed`.
        """
        embeds = self.embed(input_ids, pixel_values, image_counts, image_embeds)
        if position_ids is None:
            position_ids = default_position_ids(input_ids, attention_mask, segment_ids)
        if self.config.attention != "prefix":
            prefix_mask = None  # prefix_mask only matters in prefix mode
        mask = build_attention_mask(input_ids.size(1), attention_mask, segment_ids, prefix_mask)
        hidden = self.lm(embeds, position_ids, attn_mask=mask, is_causal=mask is None)
        logits = self.lm.logits(hidden)  # (B, T, vocab)
        if labels is None:
            return ModelOutput(logits=logits)
        loss, token_losses = shifted_cross_entropy(logits, labels)
        return ModelOutput(logits=logits, loss=loss, token_losses=token_losses)

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = False) -> dict[str, int]:
        """Parameter counts by part: {'vision', 'projector', 'lm', 'total'} (tied head counted once)."""
        counts = {}
        for name in ("vision", "projector", "lm"):
            params = getattr(self, name).parameters()
            counts[name] = sum(p.numel() for p in params if p.requires_grad or not trainable_only)
        counts["total"] = sum(counts.values())
        return counts

    def summary(self) -> str:
        """One line per part: parameters (trainable), plus image-token and attention facts."""
        total = self.num_parameters()
        trainable = self.num_parameters(trainable_only=True)
        lines = [
            f"{name:<10} {total[name] / 1e6:9.2f}M params ({trainable[name] / 1e6:.2f}M trainable)"
            for name in ("vision", "projector", "lm", "total")
        ]
        c = self.config
        lines.append(
            f"images {c.vision.image_size}px -> {c.tokens_per_image} tokens; LM {c.lm.n_layers} layers, "
            f"dim {c.lm.dim}, vocab {c.lm.vocab_size}, max_seq_len {c.lm.max_seq_len}; attention {c.attention}"
        )
        return "\n".join(lines)


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits[:, t] predicts labels[:, t+1]; -100 labels are unsupervised.

    Returns (mean loss over supervised tokens, token_losses (B, T-1) with 0 where unsupervised).
    """
    B, T, V = logits.shape
    targets = labels[:, 1:]  # (B, T-1)
    token_losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, V).float(), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(B, T - 1)
    n_supervised = (targets != -100).sum()
    loss = token_losses.sum() / n_supervised.clamp(min=1)
    return loss, token_losses
