"""A VLM with a handful of dimensions and sharp random weights, and prompts with image placeholders: the
reference models of the model, generation and weight tests (the root conftest serves them as fixtures)."""

from __future__ import annotations

import torch

from mmllm.config import LMConfig, VisionConfig, VLMConfig
from mmllm.model import VLM

IMAGE_TOKEN, PAD, EOS = 3, 0, 1


def tiny_config(attention: str = "causal", **lm_overrides) -> VLMConfig:
    """4 image tokens per 32 px image (8 px patches, pixel shuffle 2), 2-layer GQA LM of width 32."""
    lm = dict(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, max_seq_len=96)
    return VLMConfig(
        lm=LMConfig(**{**lm, **lm_overrides}),
        vision=VisionConfig(image_size=32, patch_size=8, dim=24, n_layers=2, n_heads=2, mlp_dim=48),
        pixel_shuffle=2,
        attention=attention,
        image_token_id=IMAGE_TOKEN,
        pad_token_id=PAD,
        eos_token_ids=[EOS],
    )


def tiny_model(attention: str = "causal", seed: int = 0, **lm_overrides) -> VLM:
    """Weights far larger than the 0.02 init, so logits are sharp and differ from token to token."""
    torch.manual_seed(seed)
    return sharpen_(VLM(tiny_config(attention, **lm_overrides)).eval())


def sharpen_(model: VLM) -> VLM:
    """Norm weights near 1, every other weight N(0, 0.3): sharp logits that differ from token to token."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0, 0.3)
    return model


def prompt(model: VLM, n_text: int, n_images: int = 0, seed: int = 0) -> torch.Tensor:
    """(n_images * tokens_per_image + n_text,) ids: the image blocks first, then random text tokens."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(4, model.config.lm.vocab_size, (n_text,), generator=g)
    images = torch.full((n_images * model.config.tokens_per_image,), IMAGE_TOKEN)
    return torch.cat([images, text])


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# A language model alone (vision: None) with a real byte-level BPE tokenizer and a ChatML template: small enough
# to build in a test, shaped like a pretrained LM that comes as GGUF (dims of 256 for llama.cpp's K-quants).
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TEXT = ["The quick brown fox jumps over the lazy dog 12345 times.", "def square(x):\n    return x * x\n",
        "Paris is the capital of France; Tokyo is the capital of Japan.", "Ünïcödé, emoji 🙂 and  two  spaces."] * 8


def tiny_text_model(seed: int = 0, dim: int = 256, **lm_overrides):
    """(text-only VLM, its tokenizer): 2 layers, GQA, a 320-token byte-level BPE, ChatML, sharp random weights."""
    from data_pipelines.chat import special_tokens as st
    from data_pipelines.chat.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(TEXT, vocab_size=320, min_frequency=1)
    tokenizer.encode_special_tokens = False  # as a pretrained tokenizer reads its special tokens in a template
    lm = dict(vocab_size=320, dim=dim, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=2 * dim, max_seq_len=128)
    config = VLMConfig(lm=LMConfig(**{**lm, **lm_overrides}), vision=None, image_token_id=-1,
                       pad_token_id=tokenizer.token_to_id(st.PAD), chat_template=CHATML,
                       eos_token_ids=[tokenizer.token_to_id(st.TURN_END), tokenizer.token_to_id(st.END_OF_TEXT)])
    torch.manual_seed(seed)
    model = VLM(config).eval()
    with torch.no_grad():  # sharp, but not so sharp that float32 rounding decides the argmax
        for name, param in model.named_parameters():
            param.copy_(1 + 0.1 * torch.randn_like(param) if "norm" in name else 0.08 * torch.randn_like(param))
    return model, tokenizer
