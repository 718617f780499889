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


# The common ways each region writes its numbers, fictional ranges included: a scrubber cannot tell 555-0100 to
# 555-0199 or Ofcom's 07700 900000 to 900999 from real numbers written the same way.
WRITTEN_NUMBERS = {
    "US": ["(415) 555-0132", "415-555-0132", "415.555.0132", "+1 415 555 0132", "1-800-555-0199", "(212) 555-0187"],
    "GB": ["020 7946 0018", "(020) 7946 0018", "07700 900123", "+44 20 7946 0018", "0161 496 0000"],
    "DE": ["030 12345678", "+49 30 12345678", "0171 2345678"],
    "FR": ["01 23 45 67 89", "+33 1 23 45 67 89", "06 12 34 56 78"],
    "IN": ["98765 43210", "+91 98765 43210"],
}
NOT_NUMBERS = ["built in 2024 for 12.50 dollars", "version 3.11.2", "ISBN 978-3-16-148410-0", "order 123456 of 2024-05-06",
               "at 48.8566, 2.3522", "from 12:30 to 14:45", "3 red circles and 4 blue squares", "in 1999"]


@pytest.mark.parametrize("region", sorted(WRITTEN_NUMBERS))
def test_phone_numbers_as_each_region_writes_them_are_scrubbed_and_other_numbers_are_not(region):
    from data_pipelines.privacy.pii import PIIScrubber

    scrubber = PIIScrubber(region=region)
    for number in WRITTEN_NUMBERS[region]:
        assert scrubber.scrub(f"Ring me on {number} tonight.") == ("Ring me on <PHONE> tonight.", {"phone": 1}), number
    for text in NOT_NUMBERS:
        assert scrubber.scrub(text) == (text, {}), text


def test_the_default_region_is_the_us_and_several_can_be_named(tmp_path, capsys):
    from data_pipelines.privacy.pii import PIIScrubber

    assert PIIScrubber().scrub("call (415) 555-0132")[0] == "call <PHONE>"
    both = PIIScrubber(region="US,GB")
    assert both.scrub("(415) 555-0132 or 020 7946 0018")[0] == "<PHONE> or <PHONE>"
    assert PIIScrubber(region="").scrub("call (415) 555-0132 or +44 20 7946 0018")[0] == \
        "call (415) 555-0132 or <PHONE>"  # no region: international numbers only
    (tmp_path / "doc.txt").write_text("text")
    assert main(["data", "from-text", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "text"), "--scrub-pii",
                 "--pii-region", "USA"]) == 2
    assert "unknown phone region(s) USA" in capsys.readouterr().err


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
