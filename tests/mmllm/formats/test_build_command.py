"""`mmllm build` makes a loadable model folder from a preset, a tokenizer and optional Hugging Face parts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from weight_helpers import save_hf_llama, save_hf_siglip

from mmllm.cli.main import main
from mmllm.formats.model_folder import load_model_folder


def test_build_with_pretrained_lm_and_vision_loads_and_keeps_their_weights(tmp_path, tokenizer_file):
    from data_pipelines.chat.tokenizer import load_tokenizer, vocab_size

    hf_lm = save_hf_llama(tmp_path / "lm", tie=False, vocab_size=200)  # fewer rows than the tokenizer has ids
    hf_vision = save_hf_siglip(tmp_path / "vision", full_model=True)
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "mmllm.cli.main", "build", "--preset", "tiny", "--tokenizer", str(tokenizer_file),
         "--lm", str(tmp_path / "lm"), "--vision", str(tmp_path / "vision"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "parameters:" in result.stdout and "total" in result.stdout

    model, tokenizer, config = load_model_folder(out)
    assert config.lm.vocab_size == vocab_size(load_tokenizer(tokenizer_file)[0]) > 200
    assert (config.lm.dim, config.vision.dim, config.vision.image_size) == (32, 32, 32)  # shapes of the HF parts
    assert config.image_token_id == tokenizer.token_to_id("<|image|>")

    # Pretrained rows kept; rows for the tokenizer's extra ids start at the mean pretrained row.
    for ours, theirs in ((model.lm.embed_tokens.weight, hf_lm.model.embed_tokens.weight),
                         (model.lm.lm_head.weight, hf_lm.lm_head.weight)):
        assert torch.equal(ours[:200], theirs)
        torch.testing.assert_close(ours[200:], theirs.mean(0).expand(len(ours) - 200, -1))

    input_ids = torch.randint(8, 200, (1, 9), generator=torch.Generator().manual_seed(0))
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits[..., :200], hf_lm(input_ids=input_ids).logits,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.vision(pixel_values),
                                   hf_vision.vision_model(pixel_values=pixel_values).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)


def test_build_from_preset_alone_takes_vocab_and_ids_from_tokenizer(tmp_path, tokenizer_file, capsys):
    from data_pipelines.chat.special_tokens import TokenIds
    from data_pipelines.chat.tokenizer import load_tokenizer, vocab_size

    assert main(["build", "--preset", "tiny", "--tokenizer", str(tokenizer_file), "--out", str(tmp_path)]) == 0
    _, _, config = load_model_folder(tmp_path)
    tokenizer = load_tokenizer(tokenizer_file)[0]
    ids = TokenIds.from_tokenizer(tokenizer)
    assert config.lm.vocab_size == vocab_size(tokenizer)
    assert (config.image_token_id, config.pad_token_id, config.eos_token_ids) == (ids.image, ids.pad, ids.eos_ids)
    assert config.preset == "tiny" and config.lm.dim == 192
    assert "parameters:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra_args, message",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--preset", "tiny", "--lm", "{tmp}/nowhere"], "nowhere is not a folder"),
        (["--preset", "tiny", "--vision", "{tmp}"], "config.json not found"),
        (["--preset", "tiny", "--tokenizer", "{tmp}/missing.json"], "missing.json"),
    ],
    ids=["unknown-preset", "missing-lm-dir", "no-config-json", "missing-tokenizer"],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, tokenizer_file, capsys, extra_args, message):
    args = ["build", "--tokenizer", str(tokenizer_file), "--out", str(tmp_path / "out")]
    args += [arg.format(tmp=tmp_path) for arg in extra_args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_build_refuses_to_overwrite_a_model_folder(tmp_path, tokenizer_file, capsys):
    args = ["build", "--preset", "tiny", "--tokenizer", str(tokenizer_file), "--out", str(tmp_path)]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a model" in capsys.readouterr().err
