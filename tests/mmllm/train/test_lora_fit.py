"""`mmllm fit` with `model.lora`: a language model alone (built from a GGUF file) fine-tuned with adapters. Only
the adapters train; checkpoints hold them and the base's folder, not the base; a fit resumed from one gives the
uninterrupted run's losses; DDP with adapters gives one process's update; the adapters export as mmllm's
folder (`--lora` on the base gives the checkpoint's logits), as PEFT's (transformers + peft give ours), and
merged (a model folder, and a GGUF whose greedy answers llama.cpp gives as mmllm does)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from commands import run_mmllm
from fit_helpers import column, read_metrics
from tiny_models import TEXT, tiny_text_model

import mmllm
from data_pipelines.convert.writers import ShardWriter
from mmllm.cli.main import main
from mmllm.formats.checkpoint import model_from_checkpoint, read_checkpoint
from mmllm.formats.gguf import export_gguf
from mmllm.model.lora import LoRAConfig, add_lora, lora_modules

pytestmark = pytest.mark.slow
LORA = {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj", "up_proj"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A text-only model folder built from a GGUF file (a pretrained model as users bring one), and text shards."""
    root = tmp_path_factory.mktemp("lora-base")
    model, tokenizer = tiny_text_model(dim=128)
    export_gguf(model, tokenizer, model.config, root, kinds=("f32",))
    assert main(["build", "--lm", str(root / "model-f32.gguf"), "--out", str(root / "model")]) == 0
    with ShardWriter(root / "text", maxcount=100, report=lambda *_: None) as writer:
        for text in TEXT:
            writer.write_text(text)
    return root


def lora_config(base: Path, run_dir: Path, **model) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"init_from": str(base / "model"), "lr": 1e-2, "warmup_steps": 1, "lora": dict(LORA), **model},
        "data": {"tokenizer": str(base / "model" / "tokenizer.json"), "batch_size": 4, "num_workers": 0,
                 "max_length": 48, "val_vqa_questions": 0, "shuffle_buffer": 8,
                 "sources": [{"kind": "text", "path": str(base / "text"), "weight": 1.0}]},
        "trainer": {"max_steps": 8, "limit_val_batches": 0, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(run_dir),
                    "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                "init_args": {"save_dir": str(run_dir), "name": "logs"}}]},
        "checkpoint": {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": 4, "save_top_k": -1,
                       "monitor": None},
        "export": {"out": str(run_dir / "model")},
    }
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def fitted(base, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("lora-run")
    assert main(["fit", "--config", str(lora_config(base, run_dir))]) == 0
    return run_dir


def test_a_checkpoint_holds_only_the_adapters_and_names_the_base(base, fitted):
    checkpoint = read_checkpoint(fitted / "checkpoints" / "last.ckpt")
    names = set(checkpoint["state_dict"])
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(names) == 2 * 3 * 2  # A and B of q, v and up in 2 layers
    assert checkpoint["mmllm_lora"]["base"] == str((base / "model").resolve())
    full = (base / "model" / "model.safetensors").stat().st_size
    assert (fitted / "checkpoints" / "last.ckpt").stat().st_size < full / 4  # adapters + optimiser state only
    lines = (fitted / "logs" / "version_0" / "metrics.csv").read_text()
    assert "lora/trainable_parameters" in lines


def test_the_base_weights_did_not_move_and_the_adapters_did(base, fitted):
    tuned, _, _ = model_from_checkpoint(fitted / "checkpoints" / "last.ckpt", merge_lora=False)
    original = mmllm.load(base / "model").model
    for name, layer in lora_modules(tuned).items():
        assert torch.equal(layer.weight, original.get_submodule(name).weight)
        assert layer.lora_B.weight.abs().sum() > 0
    untouched = {n: p for n, p in tuned.named_parameters() if ".lora_" not in n and ".self_attn.q_proj." not in n
                 and ".self_attn.v_proj." not in n and ".mlp.up_proj." not in n}
    for name, param in untouched.items():
        assert torch.equal(param, original.get_parameter(name)), name


def test_a_fit_resumed_from_its_checkpoint_gives_the_uninterrupted_losses(base, fitted, tmp_path):
    expected = dict(column(read_metrics(fitted), "train/loss"))
    config = lora_config(base, tmp_path)
    assert main(["fit", "--config", str(config), "--ckpt_path",
                 str(fitted / "checkpoints" / "step000004.ckpt")]) == 0
    again = dict(column(read_metrics(tmp_path), "train/loss"))
    assert sorted(again) == [4, 5, 6, 7]
    assert [again[s] for s in again] == pytest.approx([expected[s] for s in again], rel=1e-5)


def test_the_adapter_folder_on_its_base_gives_the_checkpoints_logits(base, fitted, tmp_path):
    assert main(["export", str(fitted / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "adapter")]) == 0
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    merged, tokenizer, _ = model_from_checkpoint(fitted / "checkpoints" / "last.ckpt")
    on_base = mmllm.load(base / "model", lora=tmp_path / "adapter")
    ids = torch.tensor([tokenizer.encode(TEXT[2]).ids])
    with torch.no_grad():
        torch.testing.assert_close(on_base.model(ids).logits, merged(ids).logits, rtol=0, atol=1e-5)
    result = run_mmllm("generate", "--model", base / "model", "--lora", tmp_path / "adapter", "Paris is",
                       "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == on_base.generate("Paris is", max_new_tokens=5).strip()


def test_peft_loads_the_exported_adapter_onto_the_transformers_base_and_gives_our_logits(base, fitted, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    checkpoint = fitted / "checkpoints" / "last.ckpt"
    assert main(["export", str(checkpoint), "--format", "hf", "--lora", "peft", "--out", str(tmp_path / "hf")]) == 0
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "base", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf_base, tmp_path / "hf" / "adapter").eval()
    ours, tokenizer, _ = model_from_checkpoint(checkpoint, merge_lora=False)
    ids = torch.tensor([tokenizer.encode(TEXT[0]).ids])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, rtol=0, atol=1e-5)


def test_merged_exports_run_as_the_checkpoint_does_in_mmllm_and_llama_cpp(base, fitted, tmp_path):
    checkpoint = fitted / "checkpoints" / "last.ckpt"
    assert main(["export", str(checkpoint), "--merge-lora", "--out", str(tmp_path / "merged")]) == 0
    merged = mmllm.load(tmp_path / "merged")
    assert not lora_modules(merged.model)
    reference, tokenizer, _ = model_from_checkpoint(checkpoint)
    ids = torch.tensor([tokenizer.encode(TEXT[1]).ids])
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids).logits, reference(ids).logits, rtol=0, atol=1e-6)
    pytest.importorskip("llama_cpp")
    from mmllm.formats.llama_cpp import LlamaCppText

    assert main(["export", str(checkpoint), "--merge-lora", "--format", "gguf", "--gguf-types", "f32",
                 "--out", str(tmp_path / "gguf")]) == 0
    runner = LlamaCppText(tmp_path / "gguf" / "model-f32.gguf", n_ctx=128)
    try:
        for question in ("Paris is", "def square(x):"):
            prompt = merged.processor.encode_prompt([{"role": "user", "content": question}]).input_ids
            ours = merged._generate(merged._prompt_batch([[{"role": "user", "content": question}]], [[]]),
                                    mmllm.inference.SamplingOptions(max_new_tokens=12))[0]
            assert runner.greedy(prompt, merged.config.eos_token_ids, 12) == ours
    finally:
        runner.close()


def test_a_qlora_fit_over_an_nf4_base_trains_and_exports_its_merged_model(base, tmp_path):
    pytest.importorskip("torchao")
    config = lora_config(base, tmp_path, lora={**LORA, "base": "nf4"})
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "3"]) == 0
    merged, tokenizer, _ = model_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    exported = mmllm.load(tmp_path / "model")
    ids = torch.tensor([tokenizer.encode(TEXT[3]).ids])
    with torch.no_grad():
        torch.testing.assert_close(exported.model(ids).logits, merged(ids).logits, rtol=0, atol=1e-5)


def test_a_lora_checkpoint_is_refused_for_hf_or_gguf_unless_merged_or_peft(fitted, tmp_path):
    result = run_mmllm("export", fitted / "checkpoints" / "last.ckpt", "--format", "gguf", "--out", tmp_path / "g")
    assert result.returncode == 2 and "--merge-lora" in result.stderr


# ---- DDP: two gloo processes, each on its half of a batch, update the adapters as one process does on the whole


def _ddp_step(rank: int, world: int, rendezvous: str, ids: torch.Tensor, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model, _ = tiny_text_model(dim=64)
    add_lora(model, LoRAConfig(**LORA))
    for layer in lora_modules(model).values():  # B != 0, so both A and B get gradients
        torch.nn.init.normal_(layer.lora_B.weight, std=0.02)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    half = ids.chunk(world)[rank]
    ddp(half, labels=half).loss.backward()
    optimizer.step()
    if rank == 0:
        torch.save({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, out)
    dist.barrier()  # neither rank leaves the group while the other may still talk to it
    dist.destroy_process_group()


def test_ddp_with_adapters_updates_them_as_one_process_does(tmp_path):
    ids = torch.randint(4, 320, (4, 16), generator=torch.Generator().manual_seed(1))
    for attempt in range(2):  # gloo on a loaded 2-core machine now and then aborts a process at teardown
        try:
            mp.spawn(_ddp_step, args=(2, str(tmp_path / f"rendezvous{attempt}"), ids, str(tmp_path / "ddp.pt")),
                     nprocs=2, join=True)
            break
        except mp.ProcessExitedException:
            if attempt or not (tmp_path / "ddp.pt").parent.exists():
                raise
    torch.manual_seed(0)
    model, _ = tiny_text_model(dim=64)
    add_lora(model, LoRAConfig(**LORA))
    for layer in lora_modules(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.02)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    # DDP averages the ranks' gradients: the mean of the two halves' mean losses (equal token counts)
    loss = sum(model(half, labels=half).loss for half in ids.chunk(2)) / 2
    loss.backward()
    optimizer.step()
    ddp = torch.load(tmp_path / "ddp.pt")
    single = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert ddp.keys() == single.keys() and len(single) == 12
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("override, says", [("{rank: 0}", "model.lora.rank must be a positive integer"),
                                            ("{targets: [qkv]}", "name no linear layer"),
                                            ("{modules: [vision]}", "which this model does not have")])
def test_bad_lora_options_stop_mmllm_fit_with_one_line(base, tmp_path, capsys, override, says):
    config = lora_config(base, tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(config), "--model.lora", override])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and err[-1].startswith("mmllm fit: error:")
