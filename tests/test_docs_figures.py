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
