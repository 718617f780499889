"""--scrub-pii: personal data and secrets found by presidio, phonenumbers and detect-secrets, replaced by typed
placeholders in every converter's output and counted in its summary line."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from data_pipelines.read.shards import read_samples
from mmllm.cli.main import main

pytest.importorskip("presidio_analyzer")
pytest.importorskip("phonenumbers")
pytest.importorskip("detect_secrets")

LEAKY = ("Mail jane.doe@example.com or call +44 20 7946 0958. Card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 "
         "7654 32, server 192.168.1.20, key AKIAIOSFODNN7EXAMPLE, login https://admin:s3cretPassw0rd@example.com/")


@pytest.fixture(scope="module")
def scrubber():
    from data_pipelines.privacy.pii import PIIScrubber

    return PIIScrubber(region="US")


def test_every_kind_is_replaced_by_its_placeholder_and_counted(scrubber):
    text, counts = scrubber.scrub(LEAKY)
    assert text == ("Mail <EMAIL> or call <PHONE>. Card <CREDIT_CARD>, IBAN <IBAN>, server <IP_ADDRESS>, key "
                    "<SECRET>, login https://admin:<SECRET>@example.com/")
    assert counts == {"email": 1, "phone": 1, "credit card": 1, "iban": 1, "ip address": 1, "secret": 2}


def test_ordinary_captions_are_left_alone(scrubber):
    for text in ("a red circle left of a blue square", "two cats on 3 chairs in 2019", "call me at noon"):
        assert scrubber.scrub(text) == (text, {})
    assert scrubber.scrub("Card 4111 1111 1111 1112")[1] == {}  # fails the Luhn check: not a card number
    assert scrubber.scrub("call (415) 555-2671")[1] == {"phone": 1}  # a US number without +1: --pii-region US


def test_converters_scrub_what_they_write_and_say_how_much(tmp_path, capsys):
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "a.png")
    rows = [{"id": "leak", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWho sent it? Reply to bob@example.org"},
        {"from": "gpt", "value": f"It says: {LEAKY}"}]}]
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    assert main(["data", "from-llava", str(tmp_path / "chat.json"), "--images", str(tmp_path), "--out",
                 str(tmp_path / "chat"), "--scrub-pii", "--pii-region", "US"]) == 0
    assert "scrubbed: email 2, secret 2" in capsys.readouterr().out
    (sample,) = read_samples(tmp_path / "chat", "chat", decode=False)
    written = " ".join(turn["content"] for turn in sample.conversation)
    assert "bob@example.org" not in written and "4111" not in written and "<EMAIL>" in written
    (tmp_path / "doc.txt").write_text(f"First paragraph.\n\n{LEAKY}\n")
    assert main(["data", "from-text", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "text"), "--scrub-pii"]) == 0
    (document,) = read_samples(tmp_path / "text", "text", decode=False)
    assert "<CREDIT_CARD>" in document.text and "jane.doe" not in document.text
