"""Growing a trained model's vocabulary in place, for a token its tokenizer gains (`<mask>` in a masked-LM run that
starts from a model folder without it). Deterministic, so a LoRA run's checkpoint, which holds only its adapters,
rebuilds the same rows from the same base."""

from __future__ import annotations

import torch
from torch import nn

from mmllm.model.vlm import VLM


def grow_vocabulary(model: VLM, rows: int) -> None:
    """Give the token embedding (and an untied head) at least `rows` rows, in place: a token added to a trained
    model's tokenizer (`<mask>`) starts at the mean of the existing embeddings, and its head row at zero."""
    lm, old = model.lm, model.config.lm.vocab_size
    if rows <= old:
        return
    embed = nn.Embedding(rows, lm.embed_tokens.embedding_dim).to(lm.embed_tokens.weight)
    with torch.no_grad():
        embed.weight[:old] = lm.embed_tokens.weight
        embed.weight[old:] = lm.embed_tokens.weight.mean(dim=0)
    embed.weight.requires_grad_(lm.embed_tokens.weight.requires_grad)
    lm.embed_tokens = embed
    if lm.lm_head is not None:
        head = nn.Linear(lm.lm_head.in_features, rows, bias=False).to(lm.lm_head.weight)
        with torch.no_grad():
            head.weight[:old] = lm.lm_head.weight
            head.weight[old:] = 0
        head.weight.requires_grad_(lm.lm_head.weight.requires_grad)
        lm.lm_head = head
    model.config.lm.vocab_size = rows
