"""The vision-language model: ViT -> pixel-shuffle projector -> image embeddings spliced into the LM's token
embeddings, with the attention masks of padding, packing and prefix-LM. A forward pass reads in three files:
this one, vision.py and lm.py.

Each image is `tokens_per_image` consecutive `image_token_id`s in `input_ids`; the projector output of image
i (reading order across the batch) replaces the i-th such block of embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from mmllm.config import VLMConfig
from mmllm.model.lm import LanguageModel
from mmllm.model.vision import VisionEncoder


# ---- projector: pixel shuffle (r x r neighbouring patches -> one token), then an MLP into the LM width ----

def pixel_shuffle(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, g*g, d) patches of a square grid -> (N, (g/r)^2, d*r*r) tokens.

    Token (i, j) of the (g/r) x (g/r) output grid (reading order) is the concatenation of the r x r patches
    at rows i*r .. i*r+r-1 and columns j*r .. j*r+r-1, row by row.
    """
    N, L, d = patches.shape
    g = math.isqrt(L)
    if g * g != L:
        raise ValueError(f"pixel shuffle needs a square patch grid, got {L} patches")
    if g % factor:
        raise ValueError(f"patch grid {g} is not divisible by pixel shuffle factor {factor}")
    s = g // factor
    x = patches.reshape(N, s, factor, s, factor, d)  # (N, row block, row in block, col block, col in block, d)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (N, s, s, r, r, d): neighbourhoods together
    return x.reshape(N, s * s, factor * factor * d)


class Projector(nn.Module):
    """(N, g*g, vision.dim) -> (N, tokens_per_image, lm.dim): pixel shuffle, then fc1, GELU, fc2 (projector
    "mlp"), or one bias-free `proj` (projector "linear": Idefics3's modality_projection.proj); with image_positions
    "rows_cols", plus a learned vector per row and per column of the token grid."""

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        self.factor = config.pixel_shuffle
        width = config.vision.dim * self.factor**2
        self.kind = config.projector
        if self.kind == "linear":
            self.proj = nn.Linear(width, config.lm.dim, bias=False)
        else:
            self.fc1 = nn.Linear(width, config.lm.dim)
            self.fc2 = nn.Linear(config.lm.dim, config.lm.dim)
        if config.image_positions == "rows_cols":
            side = config.vision.grid_size // self.factor  # image tokens per side
            # "embed" in the names: AdamW without weight decay, like every embedding table (train/optim.py)
            self.row_embed = nn.Parameter(torch.zeros(side, config.lm.dim))
            self.col_embed = nn.Parameter(torch.zeros(side, config.lm.dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        tokens = pixel_shuffle(patches, self.factor)  # (N, tokens_per_image, vision.dim * r^2)
        if self.kind == "linear":
            out = self.proj(tokens)
        else:
            out = self.fc2(F.gelu(self.fc1(tokens)))
        if hasattr(self, "row_embed"):  # token (i, j) in reading order gets row i's vector plus column j's
            side, dim = self.row_embed.shape
            out = out + (self.row_embed[:, None, :] + self.col_embed[None, :, :]).reshape(side * side, dim)
        return out

    def init_weights(self, std: float = 0.02) -> None:
        for linear in [m for m in self.modules() if isinstance(m, nn.Linear)]:
            nn.init.normal_(linear.weight, std=std)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        if hasattr(self, "row_embed"):  # zero: a model starts as it would without them, and learns where they pay
            nn.init.zeros_(self.row_embed)
            nn.init.zeros_(self.col_embed)


# ---- who attends to whom ----------------------------------------------------------------------------------
# Rule (True = the query may attend the key): the key is a real token (attention_mask, segment id > 0), query and
# key are in the same packed segment, and key <= query or both are prefix positions (the PaliGemma-style
# bidirectional prompt). A masked-LM sample (BERT) is bidirectional as a whole: VLM.forward marks all its tokens as
# prefix positions, in whatever attention mode, so the one rule (and document_mask's) covers it too. Every query also sees itself, so a padding row is never fully masked (SDPA would
# return NaN there).

def reads_host_for_free(tensor: torch.Tensor) -> bool:
    """Whether reading `tensor` on the host costs no device synchronisation (it lives in CPU memory)."""
    return tensor.device.type == "cpu"


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is ones then zeros: causal attention alone then never lets a real token see a pad."""
    mask = attention_mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def build_attention_mask(
    seq_len: int,
    attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """(B, 1, T, T) bool mask, or None when plain causal attention is exact (SDPA's is_causal fast path).

    None is returned without padding, packing or prefix, and also for right padding: there causal attention
    already hides the trailing pads from every real token (only the unused outputs at pads differ).
    """
    if segment_ids is None and prefix_mask is None:
        if attention_mask is None or is_right_padded(attention_mask):
            return None
    device = next(t.device for t in (attention_mask, segment_ids, prefix_mask) if t is not None)
    positions = torch.arange(seq_len, device=device)
    allowed = (positions[None, :] <= positions[:, None])[None]  # (1, T, T): key <= query
    if prefix_mask is not None:
        prefix = prefix_mask.bool()
        allowed = allowed | (prefix[:, :, None] & prefix[:, None, :])  # prompt sees the whole prompt
    key_is_real = None
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])  # never across samples
        key_is_real = segment_ids > 0
    if attention_mask is not None:
        real = attention_mask.bool()
        key_is_real = real if key_is_real is None else key_is_real & real
    if key_is_real is not None:
        allowed = allowed & key_is_real[:, None, :]
    allowed = allowed | torch.eye(seq_len, dtype=torch.bool, device=device)
    return allowed[:, None]  # (B, 1, T, T)


def default_position_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) rotary positions: restarting at 0 in each packed segment, else counting real tokens only
    (cumsum(attention_mask) - 1, clamped at 0, which is what left-padded generation needs)."""
    B, T = input_ids.shape
    index = torch.arange(T, device=input_ids.device).expand(B, T)
    if segment_ids is not None:
        starts = torch.ones_like(segment_ids, dtype=torch.bool)
        starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        segment_start = torch.where(starts, index, 0).cummax(dim=1).values  # index where each segment began
        return index - segment_start
    if attention_mask is not None:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return index


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # (B, T, vocab); None when the loss was computed in chunks (loss_chunk)
    loss: torch.Tensor | None = None  # mean cross-entropy over supervised tokens
    token_losses: torch.Tensor | None = None  # (B, T-1): loss of predicting token t+1 at t, 0 if unsupervised


class VLM(nn.Module):
    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        self.config = config
        # A language model alone (config.vision None) has neither; every image input is then refused.
        self.vision = VisionEncoder(config.vision) if config.reads_images else None
        self.projector = Projector(config) if config.reads_images else None
        self.lm = LanguageModel(config.lm)
        self.packed_attention = "dense"  # or "flex": packed rows through flex_attention (a training option)
        if config.reads_images:
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
        if not self.config.reads_images:
            if pixel_values is not None and pixel_values.size(0):
                raise ValueError("this model is a language model alone: it reads no images")
            return embeds
        is_image = input_ids == self.config.image_token_id  # (B, T)
        self._check_image_tokens(is_image, pixel_values, image_counts)
        if pixel_values is None or pixel_values.size(0) == 0:
            return embeds
        if image_embeds is None:
            image_embeds = self.encode_images(pixel_values)  # (N, tokens_per_image, dim)
        # masked_scatter fills the True positions in row-major order: image i lands in the i-th block.
        return embeds.masked_scatter(is_image[..., None], image_embeds.to(embeds.dtype))

    def check_image_tokens(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                           image_counts: torch.Tensor | None) -> None:
        """ValueError naming the first sample whose image placeholders do not match its images (reads the host)."""
        self._check_image_tokens(input_ids == self.config.image_token_id, pixel_values, image_counts, on_host=True)

    def _check_image_tokens(
        self, is_image: torch.Tensor, pixel_values: torch.Tensor | None, image_counts: torch.Tensor | None,
        on_host: bool | None = None,
    ) -> None:
        per_image = self.config.tokens_per_image
        n_images = 0 if pixel_values is None else pixel_values.size(0)
        tokens_per_row = is_image.sum(dim=1)  # (B,)
        if not (on_host if on_host is not None else reads_host_for_free(is_image)):
            # On an accelerator a host read here would stall the launch queue at every step: the check stays on
            # the device and fails asynchronously. (Training checks each batch on the host before moving it, with
            # the message below: VLMModule.on_before_batch_transfer.)
            torch._assert_async(tokens_per_row.sum() == n_images * per_image)
            if image_counts is not None:
                torch._assert_async((tokens_per_row == image_counts.to(tokens_per_row.device) * per_image).all())
            return
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
        image_embeds: torch.Tensor | None = None,
        loss_chunk: int | None = None,
        bidirectional: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Full-sequence forward (training, evaluation; generation's reference). Shapes:

        input_ids (B, T); pixel_values (N, 3, H, W), every image of the batch in reading order; image_counts
        (B,) images per sample (checked against the placeholders when given); attention_mask (B, T) 1 on real
        tokens; position_ids (B, T), default from segment_ids or attention_mask; segment_ids (B, T) 1..k per
        packed sample, 0 on padding; prefix_mask (B, T) bidirectional prompt, used only in prefix mode;
        labels (B, T), -100 where unsupervised, shifted here (logits[:, t] predicts labels[:, t + 1]; for a
        masked-LM sample the batch holds its targets one slot to the right, see data_pipelines.batching);
        bidirectional (B, T): the tokens of masked-LM samples, which attend to their whole sample in any mode;
        image_embeds: see `embed`. loss_chunk (with labels): compute the loss without the (B, T, vocab) logits, see
        `chunked_cross_entropy`; the output then has no logits.
        """
        embeds = self.embed(input_ids, pixel_values, image_counts, image_embeds)
        if position_ids is None:
            position_ids = default_position_ids(input_ids, attention_mask, segment_ids)
        if self.config.attention != "prefix":
            prefix_mask = None  # prefix_mask only matters in prefix mode
        if bidirectional is not None:  # masked-LM samples: every token is a "prefix" position of its own segment
            prefix_mask = bidirectional if prefix_mask is None else prefix_mask.bool() | bidirectional
        if self.packed_attention == "flex" and (segment_ids is not None or prefix_mask is not None):
            from mmllm.model.document_mask import document_block_mask

            mask = document_block_mask(input_ids.size(1), attention_mask, segment_ids, prefix_mask, embeds.device)
        else:
            mask = build_attention_mask(input_ids.size(1), attention_mask, segment_ids, prefix_mask)
        hidden = self.lm(embeds, position_ids, attn_mask=mask, is_causal=mask is None)
        if labels is not None and loss_chunk:
            loss, token_losses = chunked_cross_entropy(self.lm.logits, hidden, labels, loss_chunk)
            return ModelOutput(logits=None, loss=loss, token_losses=token_losses)
        logits = self.lm.logits(hidden)  # (B, T, vocab)
        if labels is None:
            return ModelOutput(logits=logits)
        loss, token_losses = shifted_cross_entropy(logits, labels)
        return ModelOutput(logits=logits, loss=loss, token_losses=token_losses)

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        """Every decoder and vision block: the units of checkpointing, regional compilation and FSDP."""
        return [*self.lm.layers, *(self.vision.encoder.layers if self.vision is not None else ())]

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (training only)."""
        self.lm.checkpointing = enabled
        if self.vision is not None:
            self.vision.encoder.checkpointing = enabled

    def compile_blocks(self, **options) -> None:
        """torch.compile every block in place (regional compilation): blocks of one kind run the same code on
        their own parameters, so they share one compiled graph and compiling costs one block, not the model.
        Parameter names and state dicts do not change."""
        import logging

        # Inductor's CPU build imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on any
        # machine with a CUDA_HOME and no GPU: nothing a CPU run can act on.
        if not torch.cuda.is_available():
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        for block in self.blocks():
            block.compile(**options)

    def num_parameters(self, trainable_only: bool = False) -> dict[str, int]:
        """Parameter counts by part: {'vision', 'projector', 'lm', 'total'} (tied head counted once)."""
        counts = {}
        for name in ("vision", "projector", "lm"):
            params = getattr(self, name).parameters() if getattr(self, name) is not None else ()
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
        images = f"images {c.vision.image_size}px -> {c.tokens_per_image} tokens" if c.reads_images else "no images"
        lines.append(
            f"{images}; LM {c.lm.n_layers} layers, "
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


def chunked_cross_entropy(head, hidden: torch.Tensor, labels: torch.Tensor,
                          chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`shifted_cross_entropy` without the (B, T, vocab) logits: the output head runs only on the positions that
    have a target, `chunk` of them at a time, each chunk's logits recomputed in the backward pass instead of kept
    (activation checkpointing). Peak memory for the loss drops from B*T*vocab fp32 logits to chunk*vocab, and
    the head's FLOPs to the supervised share of the tokens. Same loss and gradients, up to float rounding.

    head: hidden (n, dim) -> logits (n, vocab); hidden (B, T, dim); labels (B, T), -100 where unsupervised.
    """
    B, T, dim = hidden.shape
    targets = labels[:, 1:].reshape(-1)  # (N,), N = B * (T - 1)
    inputs = hidden[:, :-1].reshape(-1, dim)  # (N, dim)
    supervised = (targets != -100).nonzero().squeeze(1)  # (S,)

    def piece_losses(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), t, reduction="none")

    pieces = []
    for start in range(0, supervised.numel(), chunk):
        index = supervised[start:start + chunk]
        h, t = inputs.index_select(0, index), targets.index_select(0, index)
        if torch.is_grad_enabled():
            pieces.append(torch.utils.checkpoint.checkpoint(piece_losses, h, t, use_reentrant=False))
        else:
            pieces.append(piece_losses(h, t))
    losses = torch.cat(pieces) if pieces else inputs.new_zeros(0, dtype=torch.float32)
    token_losses = inputs.new_zeros(targets.numel(), dtype=torch.float32).index_put((supervised,), losses)
    loss = losses.sum() / max(1, supervised.numel())
    return loss, token_losses.view(B, T - 1)
