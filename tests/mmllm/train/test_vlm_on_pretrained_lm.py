"""LLaVA's two stages on a pretrained LM, at a tiny scale, through the shipped configs
(configs/smollm2-vlm-align.yaml, configs/smollm2-vlm-lora.yaml) with their paths and sizes overridden: a VLM built
around a GGUF language model in SmolVLM's layout (`mmllm build --preset tiny --lm FILE.gguf --layout smolvlm`);
stage 1 trains the tower and projector while the LM stays bit for bit; stage 2 trains LoRA adapters on the LM and
the projector in full, resumes with the uninterrupted losses, and exports merged, to a model folder and to
transformers (Idefics3), whose logits equal mmllm's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from commands import REPO
from fit_helpers import column, read_metrics
from idefics3_helpers import hf_inputs, photo
from tiny_models import tiny_text_model

from mmllm.cli.main import main
from mmllm.formats.checkpoint import read_checkpoint
from mmllm.formats.gguf import export_gguf
from mmllm.formats.model_folder import load_model_folder

pytestmark = pytest.mark.slow


def stage_config(name: str, shapes: Path, run_dir: Path, init_from: Path, **trainer) -> Path:
    """The shipped config with this test's data, model and sizes."""
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    kinds = {"caption": shapes / "train" / "captions", "chat": shapes / "train" / "chat", "text": shapes / "text"}
    config["model"]["init_from"] = str(init_from)
    if "lora" in config["model"]:
        config["model"]["lora"]["rank"] = 4
    config["data"].update(tokenizer=str(init_from / "tokenizer.json"), image_size=32, batch_size=4, num_workers=0,
                          shuffle_buffer=8, val_vqa_questions=0, max_length=96,
                          sources=[{**s, "path": str(kinds[s["kind"]])} for s in config["data"]["sources"]],
                          val_sources=[])
    config["trainer"].update(max_steps=6, precision="32-true", limit_val_batches=0, log_every_n_steps=1,
                             enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=str(run_dir), **trainer)
    config["trainer"]["logger"] = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                    "init_args": {"save_dir": str(run_dir), "name": "logs"}}]
    config["checkpoint"] = {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": 3, "save_top_k": -1,
                            "monitor": None}
    config["export"] = {"out": str(run_dir / "model")}
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def vlm_on_gguf(shapes_data, tmp_path_factory) -> Path:
    """`mmllm build --preset tiny --lm tiny.gguf --layout smolvlm`: the GGUF's LM (and its tokenizer, the project's
    and SmolVLM's tokens added), a fresh tower and a linear projector."""
    root = tmp_path_factory.mktemp("vlm-on-gguf")
    lm, tokenizer = tiny_text_model(dim=64)
    export_gguf(lm, tokenizer, lm.config, root, kinds=("f32",))
    assert main(["build", "--preset", "tiny", "--lm", str(root / "model-f32.gguf"), "--layout", "smolvlm",
                 "--out", str(root / "vlm")]) == 0
    (shapes_data / "text").mkdir(exist_ok=True)
    if not (shapes_data / "text" / "sizes.json").exists():
        from data_pipelines.convert.writers import ShardWriter

        with ShardWriter(shapes_data / "text", report=lambda *_: None) as writer:
            for index in range(16):
                writer.write_text(f"Document {index}: a red circle is left of a blue square.")
    return root / "vlm"


@pytest.fixture(scope="module")
def stage1(vlm_on_gguf, shapes_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("stage1")
    assert main(["fit", "--config", str(stage_config("smollm2-vlm-align", shapes_data, run_dir, vlm_on_gguf))]) == 0
    return run_dir


def test_the_vlm_holds_the_gguf_language_model(vlm_on_gguf):
    model, tokenizer, config = load_model_folder(vlm_on_gguf)
    lm, _ = tiny_text_model(dim=64)
    assert config.reads_images and config.lm.dim == 64
    rows = lm.config.lm.vocab_size
    assert torch.equal(model.lm.embed_tokens.weight[:rows], lm.lm.embed_tokens.weight)
    assert torch.equal(model.lm.layers[1].mlp.down_proj.weight, lm.lm.layers[1].mlp.down_proj.weight)
    assert tokenizer.token_to_id("<|image|>") is not None
    assert (config.projector, config.image_markup, config.resize) == ("linear", "idefics3", "idefics3")
    assert tokenizer.id_to_token(config.image_token_id) == "<image>"
    assert tokenizer.id_to_token(config.eos_token_ids[0]) == "<end_of_utterance>"
    assert config.chat_template.startswith("<|im_start|>")


def test_layout_needs_a_preset(tmp_path, capsys):
    assert main(["build", "--lm", str(tmp_path / "x.gguf"), "--layout", "smolvlm", "--out", str(tmp_path / "m")]) == 2
    assert "--layout smolvlm lays out a VLM: name a --preset" in capsys.readouterr().err


def test_stage1_trains_tower_and_projector_and_leaves_the_lm_as_it_was(vlm_on_gguf, stage1):
    before, _, _ = load_model_folder(vlm_on_gguf)
    after, _, _ = load_model_folder(stage1 / "model")
    for name, param in before.lm.state_dict().items():
        assert torch.equal(param, after.lm.state_dict()[name]), name
    assert not torch.equal(before.projector.state_dict()["proj.weight"], after.projector.state_dict()["proj.weight"])


def test_stage2_trains_adapters_and_projector_resumes_and_exports_merged(stage1, shapes_data, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run_dir = tmp_path / "stage2"
    run_dir.mkdir()
    config = stage_config("smollm2-vlm-lora", shapes_data, run_dir, stage1 / "model")
    assert main(["fit", "--config", str(config)]) == 0
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    names = set(checkpoint["state_dict"])
    assert {n for n in names if not n.startswith("model.projector.")} == {n for n in names if ".lora_" in n}
    assert any(n.startswith("model.projector.") for n in names) and checkpoint["mmllm_lora"]["train_modules"] == [
        "projector"]
    expected = dict(column(read_metrics(run_dir), "train/loss"))
    again_dir = tmp_path / "again"
    again_dir.mkdir()
    again = stage_config("smollm2-vlm-lora", shapes_data, again_dir, stage1 / "model")
    assert main(["fit", "--config", str(again), "--ckpt_path", str(run_dir / "checkpoints" / "step000003.ckpt")]) == 0
    resumed = dict(column(read_metrics(again_dir), "train/loss"))
    assert sorted(resumed) == [3, 4, 5]
    assert [resumed[s] for s in resumed] == pytest.approx([expected[s] for s in resumed], rel=1e-4)
    merged, _, config_out = load_model_folder(run_dir / "model")  # the fit's own export: merged
    base, _, _ = load_model_folder(stage1 / "model")
    assert config_out.reads_images
    assert not torch.equal(merged.lm.layers[0].self_attn.q_proj.weight, base.lm.layers[0].self_attn.q_proj.weight)
    assert torch.equal(merged.lm.layers[0].input_layernorm.weight, base.lm.layers[0].input_layernorm.weight)
    assert torch.equal(merged.vision.state_dict()["post_layernorm.weight"], base.vision.state_dict()["post_layernorm.weight"])
    # The merged export to transformers (Idefics3) gives the merged model's logits on its processor's inputs.
    assert main(["export", str(run_dir / "checkpoints" / "last.ckpt"), "--format", "hf", "--merge-lora",
                 "--out", str(tmp_path / "hf")]) == 0
    reference = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf", backend="pil")
    inputs = hf_inputs(processor, photo(70, 50, seed=1), "What colour is the circle?")
    with torch.no_grad():
        expected = reference(**inputs).logits
        ours = merged(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][0],
                      image_counts=torch.tensor([1])).logits
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
