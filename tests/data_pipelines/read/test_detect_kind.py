"""Which kind a source holds, read from its first samples (data_pipelines.read.shards.detect_kind), and the
commands that take --kind: left out, it is detected; named wrongly, the command stops in one line naming --kind
instead of reading every sample as the wrong kind."""

from __future__ import annotations

import pytest
from PIL import Image

from data_pipelines.convert.writers import ShardWriter
from data_pipelines.read.shards import detect_kind, resolve_kind
from mmllm.cli.main import main


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    image = Image.new("RGB", (16, 16), (200, 30, 30))
    quiet = {"report": lambda *_: None}
    with ShardWriter(root / "captions", **quiet) as captions, ShardWriter(root / "chat", **quiet) as chat, \
            ShardWriter(root / "text", **quiet) as text, ShardWriter(root / "mixed", **quiet) as mixed:
        for index in range(6):
            captions.write_caption(image, f"A red square, number {index}.")
            chat.write_chat([{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}],
                            image=image)
            text.write_text(f"Document {index}: plain text.")
        mixed.write_text("A document.")
        mixed.write_caption(image, "A caption.")
    return root


@pytest.mark.parametrize("folder, kind", [("captions", "caption"), ("chat", "chat"), ("text", "text")])
def test_the_kind_is_read_from_the_first_samples(sources, folder, kind):
    assert detect_kind(sources / folder) == kind
    assert resolve_kind(sources / folder, None) == kind == resolve_kind(sources / folder, kind)


def test_a_wrong_kind_or_a_mixed_source_is_refused_naming_kind(sources):
    with pytest.raises(ValueError, match="--kind caption, but .* holds chat samples: pass --kind chat"):
        resolve_kind(sources / "chat", "caption")
    with pytest.raises(ValueError, match=r"several kinds \(caption, text\); name the kind with --kind"):
        detect_kind(sources / "mixed")
    assert resolve_kind(sources / "mixed", "text") == "text"  # named: the user knows best


def test_commands_detect_the_kind_and_refuse_a_wrong_one(sources, tmp_path, capsys):
    assert main(["data", "canaries", str(sources / "chat"), "--out", str(tmp_path / "canaried"),
                 "--repeats", "1", "--secrets", "1"]) == 0
    assert '"kind": "chat"' in (tmp_path / "canaried" / "canaries.json").read_text()
    capsys.readouterr()
    code = main(["audit", "memorization", "--model", str(tmp_path / "no-model"), "--train", str(sources / "chat"),
                 "--heldout", str(sources / "chat"), "--kind", "caption"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pass --kind chat" in err[0]
