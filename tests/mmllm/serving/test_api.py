"""The Python API (`mmllm.load`, VisionLanguageModel) on the tiny trained model, checked against references:
one-at-a-time generation, the model's own forward pass, whole-sequence decoding."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmllm.errors import UsageError
from mmllm.inference import decode_incrementally, load

SAMPLED = dict(temperature=1.0, seed=3, max_new_tokens=8)


def test_import_mmllm_is_light_and_load_is_the_inference_loader():
    code = "import sys, mmllm; assert 'torch' not in sys.modules; print(mmllm.load.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "mmllm.inference"


def test_images_as_path_pil_or_tensor_give_the_same_caption(trained, vlm, one_thread):
    path = trained.image
    picture = Image.open(path).convert("RGB")
    tensor = torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
    captions = [vlm.caption(image, **SAMPLED) for image in (path, str(path), picture, tensor)]
    assert isinstance(captions[0], str)
    assert len(set(captions)) == 1


def test_a_list_gives_a_list_equal_to_one_at_a_time(trained, vlm, one_thread):
    # The 3-step model mostly answers nothing at once; one of its shape with sharp random weights rarely picks an
    # end token, so its answers are long and differ from prompt to prompt: padding mistakes would show.
    from mmllm.inference import VisionLanguageModel
    from mmllm.model import VLM

    from tiny_models import sharpen_

    torch.manual_seed(0)
    fresh = VisionLanguageModel(sharpen_(VLM(vlm.config).eval()), vlm.tokenizer)
    paths = sorted(trained.images.glob("*.png"))[:3]
    questions = ["What colour is the circle?", "Is there a red star?", "How many shapes are there?"]
    batched = fresh.ask(paths, questions, batch_size=3, max_new_tokens=6)
    assert batched == [fresh.ask(p, q, max_new_tokens=6) for p, q in zip(paths, questions)]
    captions = fresh.caption(paths, batch_size=2, max_new_tokens=8)
    assert captions == [fresh.caption(p, max_new_tokens=8) for p in paths]
    prompts = ["a red", "the blue square is"]
    generated = fresh.generate(prompts, max_new_tokens=5)
    assert generated == [fresh.generate(p, max_new_tokens=5) for p in prompts]
    assert all(batched) and all(captions) and all(generated) and len(set(batched)) > 1


@torch.inference_mode()
def test_left_padded_prompt_batch_gives_each_row_its_own_image_and_next_token_logits(trained, vlm, one_thread):
    """The batch that `ask` generates from, against each prompt alone (the 3-step model's greedy answers are
    mostly empty, so this checks the routing of images and padding where the answers cannot)."""
    paths = sorted(trained.images.glob("*.png"))[:3]
    questions = ("Hi", "What colour is it?", "Is there a red star?")
    conversations = [[{"role": "user", "content": "<image>\n" + q}] for q in questions]
    conversations.append([{"role": "user", "content": "No image here"}])
    image_lists = [[p] for p in paths] + [[]]

    def last_logits(batch):
        inputs = vlm._model_inputs(batch)
        return vlm.model(**inputs).logits[:, -1]

    batched = last_logits(vlm._prompt_batch(conversations, image_lists))
    for row, (conversation, images) in enumerate(zip(conversations, image_lists)):
        alone = last_logits(vlm._prompt_batch([conversation], [images]))[0]
        torch.testing.assert_close(batched[row], alone, rtol=1e-4, atol=1e-4)


def test_chat_accepts_llava_rows_like_role_rows(trained, vlm, one_thread):
    roles = [{"role": "user", "content": "<image>\nWhat is here?"}]
    llava = [{"from": "human", "value": "<image>\nWhat is here?"}]
    assert vlm.chat(roles, [trained.image], **SAMPLED) == vlm.chat(llava, [trained.image], **SAMPLED)


@pytest.mark.parametrize("strip", [True, False])
def test_decoding_incrementally_concatenates_to_the_whole_decode(vlm, strip):
    decode = vlm.processor.decode
    rng = random.Random(0)
    texts = ["  a red circle\n", "héllo wörld ✓ 日本語 ", " \n", "x"]
    sequences = [vlm.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    sequences += [[rng.randrange(vlm.config.lm.vocab_size) for _ in range(12)] for _ in range(20)]  # split bytes
    for ids in sequences:
        whole = decode(ids).strip() if strip else decode(ids)
        assert "".join(decode_incrementally(decode, ids, strip=strip)) == whole


def test_stream_methods_yield_the_whole_answers(trained, vlm, one_thread):
    assert "".join(vlm.stream_ask(trained.image, "What is here?", **SAMPLED)) == vlm.ask(
        trained.image, "What is here?", **SAMPLED)
    assert "".join(vlm.stream_generate("a red", **SAMPLED)) == vlm.generate("a red", **SAMPLED)
    messages = [{"role": "user", "content": "<image>\nHi"}]
    assert "".join(vlm.stream_chat(messages, [trained.image], **SAMPLED)) == vlm.chat(
        messages, [trained.image], **SAMPLED)


def _reference_nll(model, ids: list[int]) -> float:
    """Summed cross-entropy of ids[1:] from one full forward pass over ids."""
    logits = model(torch.tensor([ids])).logits[0, :-1].double()
    return float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))


@torch.inference_mode()
def test_text_nll_matches_the_forward_pass_over_each_piece(vlm, one_thread):
    short = "a red circle above a blue square"
    long = " ".join(f"the shape number {i} is a green triangle." for i in range(120))  # over max_seq_len tokens
    end = vlm.processor.token_ids.end_of_text
    results = vlm.text_nll([short, "", long], batch_size=2)
    assert results[1] is None  # an empty text has nothing to predict

    ids = vlm.tokenizer.encode(short, add_special_tokens=False).ids + [end]
    nll, tokens = results[0]
    assert tokens == len(ids) - 1
    assert nll == pytest.approx(_reference_nll(vlm.model, ids), rel=1e-5)

    ids = vlm.tokenizer.encode(long, add_special_tokens=False).ids + [end]
    size = vlm.config.lm.max_seq_len
    pieces = [ids[i:i + size] for i in range(0, len(ids), size)]
    assert len(pieces) > 1
    nll, tokens = results[2]
    assert tokens == sum(len(p) - 1 for p in pieces)
    assert nll == pytest.approx(sum(_reference_nll(vlm.model, p) for p in pieces), rel=1e-5)


def test_blank_image_is_the_mean_colour(vlm):
    pixels = vlm.processor.pixel_values([vlm.blank_image()])
    assert pixels.shape == (1, 3, vlm.config.vision.image_size, vlm.config.vision.image_size)
    assert pixels.abs().max() <= 1 / 255 / min(vlm.config.image_std)  # zero up to 8-bit rounding


def test_checkpoint_loads_the_same_weights_as_the_exported_folder(trained, vlm):
    from_checkpoint = load(trained.checkpoint, device="cpu")
    folder_state, checkpoint_state = vlm.model.state_dict(), from_checkpoint.model.state_dict()
    assert folder_state.keys() == checkpoint_state.keys()
    assert all(torch.equal(folder_state[k], checkpoint_state[k]) for k in folder_state)
    assert from_checkpoint.tokenizer.to_str() == vlm.tokenizer.to_str()


def test_user_mistakes_in_the_api_raise_usage_errors(trained, vlm, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not pixels")
    with pytest.raises(UsageError, match="not a readable image"):
        vlm.ask(not_an_image, "What is here?")
    with pytest.raises(UsageError, match="does not exist"):
        vlm.caption(tmp_path / "missing.png")
    with pytest.raises(UsageError, match="prompt is .* tokens"):
        vlm.ask(trained.image, "why " * 1000)
    with pytest.raises(UsageError, match="prompt is .* tokens"):
        vlm.generate("why " * 1000)
    with pytest.raises(UsageError, match="markers"):
        vlm.chat([{"role": "user", "content": "<image>\nHi"}], images=[])
