"""Fixtures for the weight tests: a tiny trained tokenizer; a tiny random Idefics3 checkpoint saved by transformers
(splitting off and on) and its imports."""

from __future__ import annotations

import idefics3_helpers as idefics3
import pytest
import torch

from mmllm.cli.main import main

TEXTS = [
    "a red circle above a blue square",
    "the green triangle is left of the yellow circle",
    "how many shapes are in the picture? three",
    "a small purple square next to a large orange triangle",
] * 20


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory):
    """A byte-level BPE tokenizer.json with the project's special tokens (ids 0..7)."""
    from data_pipelines.chat.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer(TEXTS, vocab_size=300).save(str(path))
    return path


@pytest.fixture(scope="session")
def idefics3_folder(tmp_path_factory):
    """A random tiny Idefics3ForConditionalGeneration with its processor, saved as transformers saves it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, PreTrainedTokenizerFast)

    folder = tmp_path_factory.mktemp("idefics3")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=idefics3.SPECIAL + idefics3.TILES, show_progress=False,
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(idefics3.TEXTS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<end_of_utterance>", pad_token="<pad>",
                                        additional_special_tokens=idefics3.SPECIAL[1:6] + idefics3.TILES)
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 96},
                                                max_image_size={"longest_edge": 48})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=9,
                                  chat_template=idefics3.CHAT_TEMPLATE)
    vocab = max(bpe.get_vocab().values()) + 1
    config = Idefics3Config(
        text_config={"model_type": "llama", "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
                     "pad_token_id": bpe.token_to_id("<pad>"), "eos_token_id": bpe.token_to_id("<|endoftext|>")},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 48, "patch_size": 8},
        scale_factor=2, image_token_id=bpe.token_to_id("<image>"), tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # sharper than the default init, so greedy answers are long and differ by image
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.08)
    # Generation stops where SmolVLM's does and where the import stops: at the end of a turn or of the text.
    model.generation_config.eos_token_id = [bpe.token_to_id("<end_of_utterance>"), bpe.token_to_id("<|endoftext|>")]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="session")
def imported(idefics3_folder, tmp_path_factory):
    folder, _, _ = idefics3_folder
    out = tmp_path_factory.mktemp("imported") / "model"
    assert main(["build", "--from-hf", str(folder), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def splitting_folder(idefics3_folder, tmp_path_factory):
    """The same checkpoint with its processor's image splitting on (SmolVLM's default): tiles + the whole image."""
    from transformers import Idefics3Processor

    folder, model, _ = idefics3_folder
    out = tmp_path_factory.mktemp("idefics3-split")
    processor = Idefics3Processor.from_pretrained(folder, backend="pil")  # the PIL processor, as everywhere here
    processor.image_processor.do_image_splitting = True
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out, model, Idefics3Processor.from_pretrained(out, backend="pil")


@pytest.fixture(scope="session")
def imported_splitting(splitting_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported-split") / "model"
    assert main(["build", "--from-hf", str(splitting_folder[0]), "--out", str(out)]) == 0
    return out
