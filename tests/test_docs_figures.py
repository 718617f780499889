"""Figures in the README's tables are the JSON's own, in the unit their column names (a MiB figure is never
labelled GB, a figure the JSON does not hold is not printed)."""

from __future__ import annotations

import json
import re

from commands import REPO

LORA_RESULTS = REPO / "bench" / "results" / "2026-12-05-lora-smollm2.json"
LORA_ROWS = {"LoRA r16": "lora", "QLoRA int8": "qlora-int8", "QLoRA nf4": "qlora-nf4", "full fine-tune": "full"}


def table_rows(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """(column names, rows) of the Markdown table whose header line starts with `header_start`."""
    table = []
    for line in text[text.index(header_start):].splitlines():
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table[0], table[2:]  # table[1] is the --- line


def test_the_lora_table_gives_the_jsons_memory_and_sizes_in_mib_and_only_what_it_recorded():
    runs = json.loads(LORA_RESULTS.read_text())["runs"]
    header, rows = table_rows((REPO / "README.md").read_text(), "| run | held-out pydoc bpb")
    column = {name: index for index, name in enumerate(header)}
    assert "peak RSS (MiB)" in column and "checkpoint (MiB)" in column, header
    checked = 0
    for row in rows:
        run = runs.get(LORA_ROWS.get(row[0], ""))
        if run is None:
            continue
        assert float(row[column["peak RSS (MiB)"]]) == round(run["peak_rss_mib"]), row
        assert float(row[column["checkpoint (MiB)"]]) == run["checkpoint_mib"], row
        trainable = row[column["trainable params"]]
        if run["trainable_parameters"] is None:
            assert not re.search(r"\d", trainable), row  # not recorded: no number
        else:
            assert int(trainable.replace(",", "")) == run["trainable_parameters"], row
        checked += 1
    assert checked == len(LORA_ROWS)


SEQ2SEQ_RESULTS = REPO / "bench" / "results" / "2026-12-07-seq2seq.json"
SEQ2SEQ_ROWS = {  # the first cell of a docs/seq2seq.md row -> (task, group of runs, run)
    "SmolLM2-135M-Instruct, zero-shot": ("runs", "zero-shot"),
    "+ LoRA r16, 5 CPU-minutes": ("runs", "lora-5min"),
    "+ LoRA r16, 10 CPU-minutes (resumed from the 5-minute checkpoint)": ("runs", "lora-10min (resumed)"),
    "tiny preset from scratch, causal, 1.5 minutes": ("tiny_from_scratch", "causal"),
    "tiny preset from scratch, prefix, 1.5 minutes": ("tiny_from_scratch", "prefix"),
    "+ LoRA r16, 3 CPU-minutes": ("runs", "lora-3min"),
}


def test_the_seq2seq_tables_give_the_jsons_scores():
    tasks = json.loads(SEQ2SEQ_RESULTS.read_text())["tasks"]
    text = (REPO / "docs" / "seq2seq.md").read_text()
    checked = 0
    for task, header_start in (("translation", "| model | chrF"), ("summarisation", "| model | ROUGE-L")):
        header, rows = table_rows(text, header_start)
        column = {name: index for index, name in enumerate(header)}
        for row in rows:
            group, name = SEQ2SEQ_ROWS[row[0]]
            run = tasks[task][group][name]
            cell = {name: row[index].strip("*") for name, index in column.items()}
            assert float(cell["chrF"]) == round(run["chrf"], 1), row
            assert float(cell["BLEU"]) == round(run["bleu"], 1), row
            assert float(cell["ROUGE-L"]) == round(run["rouge_l"], 3), row
            assert float(cell["exact"].rstrip("%")) == round(100 * run["exact_match"], 1), row
            if "steps" in run:
                assert int(cell["training steps"]) == run["steps"], row
            checked += 1
    assert checked == 7


def test_the_tiny_models_ten_minute_table_gives_its_jsons_scores():
    runs = json.loads((REPO / "bench" / "results" / "2026-12-07-seq2seq-tiny.json").read_text())
    runs = runs["tasks"]["translation"]["tiny_from_scratch"]
    header, rows = table_rows((REPO / "docs" / "seq2seq.md").read_text(), "| tiny model, 10 minutes | chrF")
    column = {name: index for index, name in enumerate(header)}
    assert [row[0] for row in rows] == ["causal", "prefix"]
    for row in rows:
        run, cell = runs[row[0]], {name: row[index].strip("*") for name, index in column.items()}
        assert float(cell["chrF"]) == round(run["chrf"], 1) and float(cell["BLEU"]) == round(run["bleu"], 1), row
        assert float(cell["ROUGE-L"]) == round(run["rouge_l"], 3), row
        assert float(cell["exact"].rstrip("%")) == round(100 * run["exact_match"], 1), row
        assert int(cell["training steps"]) == run["steps"], row
        assert float(cell["last train loss"]) == round(run["learning_curve"][-1][1], 3), row


TRAIN_STEP_RESULTS = REPO / "bench" / "results" / "2026-12-08-train-step-demo.json"
TRAIN_STEP_ROWS = {  # the first cell of docs/training.md's lever table -> the JSON row's name
    "before: fp32, eager": "before: fp32, eager",
    "+ Muon batched by shape": "+ Muon batched by shape",
    "+ compiled blocks (fp32)": "+ compiled blocks (fp32)",
    "bf16-mixed with torch's bf16 attention (eager)": "bf16-mixed, torch's bf16 attention",
    "bf16-mixed with float32 attention (eager)": "bf16-mixed, float32 attention",
    "after: bf16-mixed, float32 attention, compiled blocks (the demo's config)":
        "after: bf16-mixed, float32 attention, compiled blocks",
    "nanoVLM's modules (4e0c096) at the same shapes, fp32, eager, AdamW": "nanoVLM modules, 32-true, eager, AdamW",
    "nanoVLM's modules at the same shapes, bf16-mixed, eager, AdamW": "nanoVLM modules, bf16-mixed, eager, AdamW",
    "whole `mmllm fit`, before (32-true, no compile), steps 100-250": "mmllm fit, before: 32-true, no compile",
    "whole `mmllm fit`, the demo's config, steps 100-250": "mmllm fit, the shipped config",
}


def test_the_training_step_table_gives_the_jsons_step_times():
    rows = {row["name"]: row for row in json.loads(TRAIN_STEP_RESULTS.read_text())["rows"]}
    _, table = table_rows((REPO / "docs" / "training.md").read_text(), "| step | s per step")
    checked = 0
    for cells in table:
        row = rows[TRAIN_STEP_ROWS[cells[0].strip("*")]]
        seconds = row.get("median_s", row.get("s_per_step"))
        assert float(cells[1].strip("*")) == round(seconds, 3), cells
        assert cells[2].strip("*") == f"{row['speedup_vs_before']:.2f}x", cells
        checked += 1
    assert checked == len(TRAIN_STEP_ROWS)


PREFERENCE_RESULTS = REPO / "bench" / "results" / "2026-12-08-preference-shapes.json"
PREFERENCE_SFT_WEIGHT = REPO / "bench" / "results" / "2026-12-08-preference-shapes-sft-weight.json"
PREFERENCE_ROWS = {"base (half the demo's budget)": "base", "+ DPO, 300 steps": "dpo",
                   "+ DPO with sft_weight 1.0, 300 steps": "dpo-sft1", "+ fine-tuning, 300 steps (control)": "sft"}


def test_the_preference_table_gives_the_jsons_accuracies_and_yes_rates():
    models = {**json.loads(PREFERENCE_RESULTS.read_text())["models"],
              "dpo-sft1": json.loads(PREFERENCE_SFT_WEIGHT.read_text())["models"]["dpo-sft1"]}
    header, table = table_rows((REPO / "docs" / "preference.md").read_text(), "| model | val | blind")
    for cells in table:
        model = models[PREFERENCE_ROWS[cells[0]]]
        seen, blind = model["seen"], model["blind"]
        expected = {"val": seen["accuracy"], "blind": blind["accuracy"],
                    "yes to absent objects": seen["yes_to_absent_objects"],
                    "yes to any no": seen["yes_to_every_no_question"], **seen["per_question_type"]}
        for name, cell in zip(header[1:], cells[1:]):
            assert cell == f"{100 * expected[name]:.1f}%", (cells[0], name, cell)
    assert len(table) == len(PREFERENCE_ROWS)


DEMO_RUN = REPO / "bench" / "results" / "2026-12-08-demo-clean-clone.json"


def test_the_readme_demo_table_gives_the_clean_clone_runs_accuracies():
    vqa = json.loads(DEMO_RUN.read_text())["vqa"]
    readme = (REPO / "README.md").read_text()
    _, table = table_rows(readme, "| split (2000 questions each) | VQA alone")
    for cells in table:
        split = cells[0].split()[0]
        expected = [vqa[split]["alone"]["accuracy"], vqa[split]["in-context"]["accuracy"],
                    vqa[f"{split}-blind"]["alone"]["accuracy"]]
        assert [cell.strip("*") for cell in cells[1:4]] == [f"{100 * value:.1f}%" for value in expected], cells
    per_type = vqa["val"]["alone"]["per_question_type"]
    blind = vqa["val-blind"]["alone"]["per_question_type"]
    for name, value in per_type.items():
        assert re.search(rf"{name}\s+{100 * value:.1f}%\*?\*?\s+\({100 * blind[name]:.1f}%\)", readme), name


PREFERENCE_TEXT = {"+ DPO, lr 5e-4": REPO / "bench" / "results" / "2026-12-08-preference-text.json",
                   "+ DPO with sft_weight 1.0, lr 1e-4": REPO / "bench" / "results" / "2026-12-08-preference-text-sft.json"}


def test_the_text_rule_table_gives_the_jsons_success_rates():
    _, table = table_rows((REPO / "docs" / "preference.md").read_text(), "| model | rule followed")
    for cells in table:
        if cells[0] == "SmolLM2-135M-Instruct":
            runs = [json.loads(path.read_text())["before"] for path in PREFERENCE_TEXT.values()]
            assert all(run == runs[0] | {"eval_seconds": run["eval_seconds"]} for run in runs)  # one base model
            run = runs[0]
        else:
            run = json.loads(PREFERENCE_TEXT[cells[0]].read_text())["after"]
        assert cells[1:] == [f"{100 * run['rule_success']:.1f}%", f"{100 * run['rule_with_an_answer']:.1f}%"], cells
    assert len(table) == 3


def test_the_video_step_table_gives_the_jsons_times_and_memory():
    rows = {row["images_per_sample"]: row for row in json.loads(
        (REPO / "bench" / "results" / "2026-12-08-train-step-video.json").read_text())["rows"]}
    _, table = table_rows((REPO / "docs" / "training.md").read_text(), "| images per sample | tokens per row")
    for cells in table:
        row = rows[int(cells[0].split()[0])]
        assert cells[1:] == [str(row["seq_len"]), f"{row['step_time']['median_s']:.3f}",
                             str(round(row["peak_memory_bytes"] / 2**20))], cells
    assert len(table) == 2
