"""The bias-mitigation tables of docs/privacy-and-bias.md give the figures of their committed JSONs."""

from __future__ import annotations

import json
import re

import pytest

from commands import REPO

RESULTS = {"| run | val accuracy | red circles": REPO / "bench" / "results" / "2026-12-07-bias-mitigation.json",
           "| run, 600 steps | val accuracy | red circles":
               REPO / "bench" / "results" / "2026-12-07-bias-mitigation-600.json"}
ROWS = {"demo recipe (baseline)": "baseline", "`data.balance` resample by group": "balance-resample",
        "`data.balance` reweight by group": "balance-reweight", "`model.group_dro` by group": "group-dro",
        "`data.counterfactual` red=blue,green": "counterfactual"}


@pytest.mark.parametrize("header", list(RESULTS))
def test_the_mitigation_tables_are_the_jsons(header):
    runs = {run["run"]: run for run in json.loads(RESULTS[header].read_text())["runs"]}
    text = (REPO / "docs" / "privacy-and-bias.md").read_text()
    table = text[text.index(header):].split("\n\n")[0].splitlines()[2:]
    assert len(table) == len(ROWS)
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        run = runs[ROWS[cells[0]]]
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", " ".join(cells[1:]).replace("%-", "% "))]
        circle, cases = run["circle_colour"], run["counterfactual"]
        expected = [100 * run["val_accuracy"],
                    100 * circle["red"]["accuracy"], *(100 * x for x in circle["red"]["ci95"]),
                    100 * circle["non_red"]["accuracy"], *(100 * x for x in circle["non_red"]["ci95"]),
                    100 * circle["gap"], *(100 * x for x in circle["gap_ci95"]), run["gap_vs_baseline"],
                    100 * cases["should change"]["changed"], 100 * cases["should change"]["accuracy"],
                    100 * cases["should not change"]["changed"]]
        assert numbers == [round(x, 2 if i == 10 else 1) for i, x in enumerate(expected)], cells
