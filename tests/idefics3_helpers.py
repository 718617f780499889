"""A tiny random Idefics3 checkpoint made by transformers and saved as transformers saves it, for the interop
tests (import, export to transformers and to llama.cpp); and the helpers that prompt it as transformers does."""

from __future__ import annotations

import numpy as np
from PIL import Image

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
           "<global-img>", "<pad>"]
TILES = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]  # as SmolVLM's tokenizer has
# SmolVLM's chat template, in the layout its checkpoints ship (role, ":" before an image or ": " before text).
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
TEXTS = ["a red circle above a blue square", "What colour is the circle? It is red.",
         "the green triangle is left of the yellow star", "Describe the image. A small purple diamond.",
         "two lines\n\n"] * 30  # a text ending in "\n\n" teaches its one token (llama.cpp writes it before an image)


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth picture with edges (Lanczos resizing rings on edges, so a wrong kernel shows)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) % 64) * 4], axis=-1)
    pixels[height // 4: height // 2, width // 3: width // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels.astype(np.uint8))


def hf_inputs(processor, image, question: str) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=prompt, images=[image], return_tensors="pt")


def write_shards(root):
    """Caption, chat and text shards (a few samples each) for a fine-tune of the imported model."""
    from data_pipelines.convert.writers import ShardWriter

    quiet = {"report": None}
    with ShardWriter(root / "captions", **quiet) as captions, ShardWriter(root / "chat", **quiet) as chat, \
            ShardWriter(root / "text", **quiet) as text:
        for index in range(8):
            image = photo(48 + 4 * index, 48, seed=index)
            captions.write_caption(image, "A small purple diamond." if index % 2 else "A red circle.")
            chat.write_chat([{"from": "human", "value": "<image>\nWhat colour is the circle?"},
                             {"from": "gpt", "value": "It is red."}], image=image)
            text.write_text("the green triangle is left of the yellow star")
    return root
