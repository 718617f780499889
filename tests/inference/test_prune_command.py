"""`mmllm prune` as a user runs it on the trained tiny model: a smaller folder that `ask` loads and `mmllm fit
--model.init_from` fine-tunes; a share that leaves nothing exits 2 with one line."""

from __future__ import annotations

from inference_helpers import REPO, run_mmllm

from mmllm.model_folder import load_model_folder
from mmllm.pruning import lm_parameters


def test_mmllm_prune_writes_a_folder_every_command_loads_and_fit_fine_tunes(trained, tmp_path):
    out = tmp_path / "pruned"
    result = run_mmllm("prune", trained.model, "--data", trained.data / "train" / "chat", "--attention-heads", "0.34",
                       "--mlp-channels", "0.3", "--layers", "1", "--samples", "32", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "fewer" in result.stdout
    model, _, config = load_model_folder(out)
    full, _, full_config = load_model_folder(trained.model)
    assert (config.lm.n_layers, config.lm.n_heads) == (full_config.lm.n_layers - 1, 4)
    assert lm_parameters(model) < 0.75 * lm_parameters(full)
    asked = run_mmllm("ask", "--model", out, trained.image, "What colour is the circle?", "--max-new-tokens", "4")
    assert asked.returncode == 0, asked.stderr
    data = trained.data
    tuned = run_mmllm(
        "fit", "--config", REPO / "configs" / "shapes-tiny.yaml", "--model.init_from", out,
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.tokenizer", out / "tokenizer.json", "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.val_vqa_questions", "2",
        "--data.sources", f"[{{kind: chat, path: {data}/train/chat, weight: 1.0}}]",
        "--data.val_sources", f"[{{kind: chat, path: {data}/val/chat}}]",
        "--checkpoint.dirpath", tmp_path / "checkpoints", "--export.out", tmp_path / "tuned",
        cwd=tmp_path,
    )
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert load_model_folder(tmp_path / "tuned")[2] == config

    again = run_mmllm("prune", trained.model, "--data", trained.data / "train" / "chat", "--attention-heads", "1",
                      "--out", tmp_path / "nothing")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
