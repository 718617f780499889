"""Sequence-to-sequence through the commands a user runs: `mmllm data from-pairs` writes one-turn chats and counts
bad rows by reason; `mmllm eval --task seq2seq` generates each held-out assistant turn and scores it with sacrebleu
and rouge-score, writes the per-sample JSON lines and prints the worst cases; every mistake is one line and exit 2."""

from __future__ import annotations

import json
import tarfile

import pytest
from tiny_models import tiny_text_model

from mmllm.cli.main import main

PAIRS = [{"en": "file not found", "de": "Datei nicht gefunden", "program": "coreutils"},
         {"en": "out of memory", "de": "Speicher erschöpft", "program": "bash"},
         {"en": "permission denied", "de": "Zugriff verweigert", "program": "coreutils"}]


def write_pairs(path, extra_lines: list[bytes] = ()) -> None:
    lines = [json.dumps(row, ensure_ascii=False).encode() for row in PAIRS] + list(extra_lines)
    path.write_bytes(b"\n".join(lines) + b"\n")


def chats(folder) -> list[dict]:
    with tarfile.open(folder / "00000.tar") as tar:
        return [json.loads(tar.extractfile(member).read()) for member in tar.getmembers()]


def test_from_pairs_writes_templated_chats_and_counts_bad_rows_by_reason(tmp_path, capsys):
    bad = [json.dumps({"en": "", "de": "leer"}).encode(),                       # empty field
           json.dumps({"de": "ohne Quelle"}).encode(),                           # missing field
           b'{"en": "caf\xe9", "de": "Caf\xe9"}',                                # Latin-1 bytes: not UTF-8
           json.dumps({"en": "x" * 50, "de": "zu lang"}).encode(),              # over --max-length
           b"{not json"]
    write_pairs(tmp_path / "pairs.jsonl", bad)
    assert main(["data", "from-pairs", str(tmp_path / "pairs.jsonl"), "--source-field", "en", "--target-field", "de",
                 "--template", "Translate to German: {source}", "--max-length", "60",
                 "--out", str(tmp_path / "shards")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith("skipped 5: empty field 1, missing field 1, not utf-8 1, too long 1, bad json line 1")
    written = chats(tmp_path / "shards")
    assert [c["conversations"] for c in written] == [
        [{"from": "human", "value": f"Translate to German: {p['en']}"}, {"from": "gpt", "value": p["de"]}]
        for p in PAIRS]
    assert [c["program"] for c in written] == ["coreutils", "bash", "coreutils"]  # other fields kept


@pytest.mark.parametrize("options, message", [
    (["--template", "Translate: {text}"], "--template must contain {source} exactly once, got 'Translate: {text}'"),
    (["--max-length", "0"], "--max-length must be at least 1, got 0"),
    (["--target-field", "en"], "--source-field and --target-field are both 'en'"),
    (["--source-field", "english"], "no sample written from FILE: every row was skipped (are --source-field "
                                    "english and --target-field de right?)"),
    (["--blur-faces"], "--blur-faces: pairs have no images"),
])
def test_from_pairs_mistakes_exit_2_with_one_line(tmp_path, capsys, options, message):
    write_pairs(tmp_path / "pairs.jsonl")
    # the later of two spellings of an option wins, so the case's options go after the good ones
    argv = ["data", "from-pairs", str(tmp_path / "pairs.jsonl"), "--source-field", "en", "--target-field", "de",
            *options, "--out", str(tmp_path / "shards")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mmllm: error: " + message.replace("FILE", str(tmp_path / "pairs.jsonl"))


def test_from_pairs_mistake_in_a_fresh_process_prints_one_line_and_no_traceback(tmp_path):
    from commands import run_mmllm

    write_pairs(tmp_path / "pairs.jsonl")
    result = run_mmllm("data", "from-pairs", tmp_path / "pairs.jsonl", "--source-field", "en", "--target-field", "de",
                       "--template", "no slot", "--out", tmp_path / "shards")
    assert result.returncode == 2
    assert result.stderr.strip() == "mmllm: error: --template must contain {source} exactly once, got 'no slot'"


def test_from_pairs_missing_file_exits_2(tmp_path, capsys):
    assert main(["data", "from-pairs", str(tmp_path / "none.jsonl"), "--source-field", "en", "--target-field", "de",
                 "--out", str(tmp_path / "shards")]) == 2
    assert capsys.readouterr().err.strip() == f"mmllm: error: no such file: {tmp_path / 'none.jsonl'}"


@pytest.fixture(scope="module")
def seq2seq_setup(tmp_path_factory):
    """A text-only tiny model folder and chat shards of the pairs, as from-pairs writes them."""
    from mmllm.formats.model_folder import save_model_folder

    root = tmp_path_factory.mktemp("seq2seq")
    model, tokenizer = tiny_text_model(dim=32)
    save_model_folder(model, tokenizer, root / "model")
    write_pairs(root / "pairs.jsonl")
    assert main(["data", "from-pairs", str(root / "pairs.jsonl"), "--source-field", "en", "--target-field", "de",
                 "--template", "Translate to German: {source}", "--out", str(root / "shards")]) == 0
    return root


def test_eval_seq2seq_scores_the_models_own_answers_and_writes_every_sample(seq2seq_setup, tmp_path, capsys):
    import mmllm
    from mmllm.evaluation.seq2seq_metrics import seq2seq_scores

    root = seq2seq_setup
    assert main(["eval", "--model", str(root / "model"), "--data", str(root / "shards"), "--task", "seq2seq",
                 "--max-new-tokens", "6", "--out", str(tmp_path / "report.json"),
                 "--samples-out", str(tmp_path / "samples.jsonl")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples == report["samples"] and len(samples) == len(PAIRS)
    vlm = mmllm.load(root / "model")
    expected = [vlm.chat([{"role": "user", "content": f"Translate to German: {p['en']}"}], max_new_tokens=6)
                for p in PAIRS]
    assert [s["prediction"] for s in samples] == expected
    assert [s["reference"] for s in samples] == [p["de"] for p in PAIRS]
    scores = seq2seq_scores(expected, [p["de"] for p in PAIRS])
    assert report["metrics"]["chrf"] == pytest.approx(scores.chrf) and report["metrics"]["bleu"] == scores.bleu
    assert report["metrics"]["rouge_l"] == pytest.approx(scores.rouge_l)
    assert "chrF" in printed and "ROUGE-L" in printed and "worst 3 by sentence chrF" in printed
    assert [c["chrf"] for c in report["worst_cases"]] == sorted(s["chrf"] for s in samples)


@pytest.mark.parametrize("options, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["--turns", "alone"], "--turns, --explain-dir, --group-by and --counterfactual apply to --task vqa"),
])
def test_eval_seq2seq_mistakes_exit_2_with_one_line(seq2seq_setup, capsys, options, message):
    root = seq2seq_setup
    assert main(["eval", "--model", str(root / "model"), "--data", str(root / "shards"), "--task", "seq2seq",
                 *options]) == 2
    assert capsys.readouterr().err.strip() == f"mmllm: error: {message}"


def test_eval_seq2seq_on_text_shards_exits_2_naming_the_kind(seq2seq_setup, tmp_path, capsys):
    from data_pipelines.convert.writers import ShardWriter

    with ShardWriter(tmp_path / "text", report=None) as writer:
        writer.write_text("just a document")
    assert main(["eval", "--model", str(seq2seq_setup / "model"), "--data", str(tmp_path / "text"),
                 "--task", "seq2seq"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmllm: error: ") and "--task seq2seq" in err[0]
