"""`mmllm build --from-hf`: a whole Idefics3 checkpoint made by transformers (tiny, random, saved to disk here)
reproduces transformers' logits on the same pixels and prompt, its processor's pixels and ids, and its greedy
answers through `mmllm ask`."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from idefics3_helpers import hf_inputs, photo, write_shards  # noqa: E402
from mmllm.cli.main import main  # noqa: E402
from mmllm.inference import VisionLanguageModel  # noqa: E402
from mmllm.formats.model_folder import load_model_folder  # noqa: E402

def greedy_answers_agree(model, processor, folder, tmp_path, capsys, max_new_tokens: int) -> list[str]:
    """transformers' greedy answers on two pictures and questions, each equal to `mmllm ask --model folder`'s."""
    answers = []
    for seed, question in enumerate(["What colour is the circle?", "Describe the image."]):
        image = photo(56 + 8 * seed, 40 + 8 * seed, seed=seed)
        path = tmp_path / f"{seed}.png"
        image.save(path)
        inputs = hf_inputs(processor, image, question)
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        expected = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        capsys.readouterr()
        assert main(["ask", "--model", str(folder), str(path), question, "--max-new-tokens", str(max_new_tokens),
                     "--json"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"] == expected.strip()
        answers.append(expected)
    return answers


def test_imported_model_gives_transformers_logits_on_its_processors_inputs(idefics3_folder, imported):
    _, reference, processor = idefics3_folder
    model, _, config = load_model_folder(imported)
    assert config.projector == "linear" and config.image_markup == "idefics3" and config.tokens_per_image == 9
    inputs = hf_inputs(processor, photo(70, 50, seed=1), "What colour is the circle?")
    with torch.no_grad():
        expected = reference(**inputs).logits
        ours = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][0],
                     image_counts=torch.tensor([1])).logits
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(70, 50), (40, 90), (48, 48)], ids=["wide", "tall", "square"])
def test_processor_gives_transformers_pixels_and_ids(idefics3_folder, imported, size):
    _, _, processor = idefics3_folder
    model, tokenizer, _ = load_model_folder(imported)
    vlm = VisionLanguageModel(model, tokenizer)
    image, question = photo(*size, seed=2), "What colour is the circle?"
    expected = hf_inputs(processor, image, question)
    ours = vlm.processor.encode_question(question, image)
    assert ours.input_ids == expected["input_ids"][0].tolist()
    torch.testing.assert_close(ours.pixel_values, expected["pixel_values"][0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(70, 50), (40, 90), (48, 48), (200, 30)], ids=["wide", "tall", "square", "strip"])
def test_image_splitting_gives_transformers_tiles_and_ids(splitting_folder, imported_splitting, size):
    _, _, processor = splitting_folder
    model, tokenizer, config = load_model_folder(imported_splitting)
    assert config.image_splitting
    image, question = photo(*size, seed=4), "What colour is the circle?"
    expected = hf_inputs(processor, image, question)
    ours = VisionLanguageModel(model, tokenizer).processor.encode_question(question, image)
    assert ours.num_images > 2 and "<row_1_col_1>" in tokenizer.decode(ours.input_ids, skip_special_tokens=False)
    assert ours.input_ids == expected["input_ids"][0].tolist()
    torch.testing.assert_close(ours.pixel_values, expected["pixel_values"][0], rtol=0, atol=1e-6)


def test_image_splitting_logits_and_greedy_answers_equal_transformers(splitting_folder, imported_splitting, tmp_path,
                                                                      capsys):
    _, reference, processor = splitting_folder
    model, _, _ = load_model_folder(imported_splitting)
    inputs = hf_inputs(processor, photo(70, 50, seed=1), "What colour is the circle?")
    tiles = inputs["pixel_values"][0]  # (5, 3, 48, 48): 2 x 2 tiles and the whole image
    assert tiles.shape[0] == 5
    with torch.no_grad():
        expected = reference(**inputs).logits
        ours = model(input_ids=inputs["input_ids"], pixel_values=tiles, image_counts=torch.tensor([5])).logits
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    greedy_answers_agree(reference, processor, imported_splitting, tmp_path, capsys, max_new_tokens=12)


def test_ask_on_the_imported_folder_gives_transformers_greedy_answer(idefics3_folder, imported, tmp_path, capsys):
    _, reference, processor = idefics3_folder
    answers = greedy_answers_agree(reference, processor, imported, tmp_path, capsys, max_new_tokens=12)
    assert len(set(answers)) > 1 and all(answers)  # a model that says nothing, or one thing, would prove little


def test_fine_tuning_data_keeps_the_checkpoints_chat_template(imported):
    model, tokenizer, _ = load_model_folder(imported)
    processor = VisionLanguageModel(model, tokenizer).processor
    conversation = [{"role": "user", "content": "<image>\nWhat colour is the circle?"},
                    {"role": "assistant", "content": "It is red."}]
    sample = processor.encode_conversation(conversation, [photo(48, 48, seed=3)])
    text = tokenizer.decode(sample.input_ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>User:<fake_token_around_image><global-img><image>")
    assert text.endswith("<fake_token_around_image>What colour is the circle?<end_of_utterance>\nAssistant: It is "
                         "red.<end_of_utterance>\n")
    supervised = [token for token, label in zip(sample.input_ids, sample.labels) if label != -100]
    assert tokenizer.decode(supervised, skip_special_tokens=False) == " It is red.<end_of_utterance>"


@pytest.fixture(scope="module")
def tuned(imported, tmp_path_factory):
    """A fine-tune of the imported model on caption, chat and text shards; (run folder, exported model folder)."""
    import yaml

    run = tmp_path_factory.mktemp("tuned")
    data = write_shards(run / "data")
    config = {
        "seed_everything": 0,
        "model": {"init_from": str(imported), "lr": 1e-3, "warmup_steps": 1},
        "data": {"tokenizer": str(imported / "tokenizer.json"), "batch_size": 6, "num_workers": 0,
                 "shuffle_buffer": 8, "val_vqa_questions": 0,
                 "sources": [{"kind": kind, "path": str(data / folder), "weight": 1.0}
                             for kind, folder in (("caption", "captions"), ("chat", "chat"), ("text", "text"))]},
        "trainer": {"max_steps": 6, "log_every_n_steps": 1, "limit_val_batches": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(run),
                    "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                "init_args": {"save_dir": str(run), "name": "logs"}}]},
        "checkpoint": {"dirpath": str(run / "checkpoints")},
        "export": {"out": str(run / "model")},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(run / "config.yaml")]) == 0
    return run, run / "model"


def test_fit_from_the_imported_folder_trains_on_every_kind_and_keeps_its_template(imported, tuned):
    run, folder = tuned
    metrics = (next((run / "logs").rglob("metrics.csv"))).read_text()
    for kind in ("caption", "chat", "text"):
        assert f"train/loss_{kind}" in metrics
    model, tokenizer, config = load_model_folder(folder)
    _, original_tokenizer, original = load_model_folder(imported)
    assert config.chat_template == original.chat_template and config.image_markup == "idefics3"
    assert tokenizer.get_vocab_size() == original_tokenizer.get_vocab_size()  # nothing added


def test_export_hf_of_the_imported_folder_gives_back_the_checkpoints_weights_bit_for_bit(idefics3_folder, imported,
                                                                                          tmp_path):
    from safetensors.torch import load_file

    folder, _, _ = idefics3_folder
    assert main(["export", str(imported), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    original, exported = load_file(folder / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name


def test_export_hf_of_a_fine_tuned_model_answers_in_transformers_as_mmllm_ask_does(tuned, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run, folder = tuned
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert main(["export", str(checkpoint), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf", backend="pil")
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    greedy_answers_agree(model, processor, folder, tmp_path, capsys, max_new_tokens=10)


def test_export_hf_refuses_an_mlp_projector_in_one_line(tokenizer_file, tmp_path, capsys):
    assert main(["build", "--preset", "tiny", "--tokenizer", str(tokenizer_file), "--out", str(tmp_path / "mlp")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "mlp"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.projector linear" in lines[0]
    assert not (tmp_path / "hf" / "config.json").exists()


@pytest.mark.parametrize("factor", [2, 4])
def test_pixel_shuffle_orders_channels_as_idefics3s_connector(factor):
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    from mmllm.model.vlm import pixel_shuffle

    patches = torch.randn(3, 64, 5)  # (N, 8 x 8 patches, d)
    expected = Idefics3Connector.pixel_shuffle(None, patches, scale_factor=factor)
    assert torch.equal(pixel_shuffle(patches, factor), expected)
