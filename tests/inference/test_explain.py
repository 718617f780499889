"""Where an answer looked: a model trained here on colour questions puts the relevance on the asked object's cell.

The property, not the picture: shapes scenes at 48 px with 4 px patches and pixel shuffle 4 give one image token
per cell of the 3 x 3 scene grid, so chance is 1/9 of the mass per cell. A micro model trained for 150
Muon steps (seconds) answers "What colour is the <shape>?" and, measured over held-out scenes, puts on average
more than CHANCE + MARGIN of the relevance on the cell of the shape it was asked about.
"""

from __future__ import annotations

import io
import json
import random

import pytest
import torch

from data_pipelines.processor import collate
from data_pipelines.shapes import CELLS, render, sample_scene, scene_rng
from data_pipelines.tokenizer import TokenIds, load_tokenizer, train_tokenizer, vocab_size
from mmllm.config import LMConfig, VisionConfig, VLMConfig
from mmllm.inference import VisionLanguageModel
from mmllm.model import VLM
from mmllm.processing import processor_for
from mmllm.train.optim import build_optimizer, param_groups

CHANCE, MARGIN = 1 / 9, 0.10  # measured here: 0.30 on the asked cell, answers 65% right
STEPS, BATCH = 150, 32


def colour_questions(count: int, split: str) -> list[tuple]:
    """(image, question, answer, cell of the asked object) for scenes with a shape that occurs once."""
    asked, index = [], 0
    while len(asked) < count:
        scene = sample_scene(scene_rng(7, split, index), split)
        unique = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
        if unique:
            target = random.Random(index).choice(unique)
            asked.append((render(scene, 48), f"What colour is the {target.shape}?", target.colour, target.cell))
        index += 1
    return asked


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    torch.manual_seed(0)
    train = colour_questions(800, "train")
    texts = [q for _, q, _, _ in train] + [a for _, _, a, _ in train]
    path = tmp_path_factory.mktemp("explain") / "tokenizer.json"
    train_tokenizer(texts * 3, vocab_size=300).save(str(path))
    tokenizer, _ = load_tokenizer(path)
    ids = TokenIds.from_tokenizer(tokenizer)
    config = VLMConfig(
        lm=LMConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128, max_seq_len=64, qk_norm=True),
        vision=VisionConfig(image_size=48, patch_size=4, dim=48, n_layers=1, n_heads=2, mlp_dim=96),
        pixel_shuffle=4,
    ).with_tokenizer_ids(vocab_size(tokenizer), ids.image, ids.pad, ids.eos_ids)
    model = VLM(config)
    processor = processor_for(config, tokenizer)
    samples = [processor.encode_conversation([{"role": "user", "content": "<image>\n" + q},
                                              {"role": "assistant", "content": a}], [image])
               for image, q, a, _ in train]
    groups = [g for part in ("vision", "projector", "lm")
              for g in param_groups(getattr(model, part).named_parameters(), lr=4e-3, weight_decay=0.0,
                                    algorithm="muon", name=part)]
    optimizer = build_optimizer(groups, "muon", (0.9, 0.98), 0.95, fused=False)
    order = random.Random(0)
    model.train()
    for step in range(STEPS):
        batch = collate(order.sample(samples, BATCH), pad_id=config.pad_token_id)
        loss = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_counts",
                                              "labels")}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return VisionLanguageModel(model, tokenizer)


def test_colour_answers_put_their_relevance_on_the_asked_objects_cell(colour_model):
    held_out = colour_questions(40, "val")
    correct, mass = 0, []
    for image, question, answer, cell in held_out:
        explanation = colour_model.explain(image, question)
        assert explanation.relevance.shape == (3, 3)
        assert float(explanation.relevance.sum()) == pytest.approx(1.0, abs=1e-4)
        correct += explanation.answer == answer
        mass.append(float(explanation.relevance.flatten()[CELLS.index(cell)]))
    assert correct / len(held_out) > 0.5, "the fixture did not learn colours: the property would mean nothing"
    assert sum(mass) / len(mass) > CHANCE + MARGIN, (correct, mass)
    print(f"accuracy {correct / len(held_out):.2f}, mean mass on the asked cell {sum(mass) / len(mass):.3f}")


def test_explain_writes_the_image_beside_its_heatmap_and_reports_the_path(colour_model, tmp_path):
    image, question, _, _ = colour_questions(1, "val")[0]
    explanation = colour_model.explain(image, question, answer="red")
    assert explanation.answer == "red" and explanation.question == question
    path = explanation.save(tmp_path / "out.png", size=96)
    from PIL import Image

    with Image.open(path) as picture:
        assert picture.size == (2 * 96 + 8, 96)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert json.dumps([[float(v) for v in row] for row in explanation.relevance])  # JSON-ready shares
