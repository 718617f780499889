"""Personal data and secrets in text, replaced by typed placeholders before it is written into shards (`--scrub-pii`).

Detection is left to maintained libraries, not to regexes of our own:
- detect-secrets (Yelp): API keys and tokens (AWS, GitHub, Slack, Stripe, JWTs, private keys), passwords after a
  keyword, and the password of a URL's user:password@ -> <SECRET>
- presidio-analyzer's pattern recognisers, which need no spaCy model: credit-card numbers (with their Luhn check)
  -> <CREDIT_CARD>, IBANs (with their checksum) -> <IBAN>, e-mail addresses -> <EMAIL>, IPv4/IPv6 -> <IP_ADDRESS>
- phonenumbers (Google's libphonenumber): phone numbers in international form, or national form in one of
  `regions` (default US) -> <PHONE>. A number counts when libphonenumber calls it valid, or when it is a possible
  number of the region written with the region's own digit grouping ("(415) 555-0132", "07700 900123"): the
  ranges kept for fiction (555-0100 to 555-0199, Ofcom's 07700 900000 to 900999) are not valid, but a scrubber cannot tell them from
  real numbers in the same format. The grouping rule keeps dates, versions, prices and ISBNs, which are possible
  numbers too; national numbers under 8 digits (local numbers without their area code) are left.

The passes run in that order, each on the previous one's output, so a number already replaced as a card is not
found again as a phone. What none of them can see: names, postal addresses, faces in images (`--blur-faces`),
numbers written in words, personal data in languages whose formats the libraries do not know.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter

PLACEHOLDERS = {"SECRET": "<SECRET>", "CREDIT_CARD": "<CREDIT_CARD>", "IBAN_CODE": "<IBAN>",
                "EMAIL_ADDRESS": "<EMAIL>", "IP_ADDRESS": "<IP_ADDRESS>", "PHONE_NUMBER": "<PHONE>"}
COUNT_NAMES = {"SECRET": "secret", "CREDIT_CARD": "credit card", "IBAN_CODE": "iban", "EMAIL_ADDRESS": "email",
               "IP_ADDRESS": "ip address", "PHONE_NUMBER": "phone"}
SECRET_PLUGINS = ("AWSKeyDetector", "BasicAuthDetector", "GitHubTokenDetector", "JwtTokenDetector",
                  "KeywordDetector", "PrivateKeyDetector", "SlackDetector", "StripeDetector",
                  "AzureStorageKeyDetector", "DiscordBotTokenDetector", "OpenAIDetector", "SendGridDetector",
                  "TwilioKeyDetector")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-+/=.]")  # a reported secret is widened to its whole token
MIN_DIGITS = 8  # a national number with its area code; shorter ones (a local "555 0132") are left: too many
# decimals and codes look like them
# A date is a valid number in regions with flexible lengths (Germany's 2024-05-06): never a phone.
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")


class PIIScrubber:
    """`scrub(text) -> (text with placeholders, Counter of replacements by kind)`; libraries imported on creation.

    region: the phone regions for numbers written without a country code, comma-separated ("US", "GB,DE";
    "" or None: international numbers only).
    """

    def __init__(self, region: str | None = "US", min_score: float = 0.5) -> None:
        try:
            import phonenumbers
            from detect_secrets.core.scan import scan_line
            from detect_secrets.settings import cache_bust, configure_settings_from_baseline
            CreditCardRecognizer, EmailRecognizer, IbanRecognizer, IpRecognizer = _presidio_recognizers()
        except ImportError as error:
            raise ImportError(f"--scrub-pii needs presidio-analyzer, phonenumbers and detect-secrets: "
                              f"pip install 'mmllm[privacy]' ({error.name} is missing)") from error
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        self._phonenumbers, self._scan_line = phonenumbers, scan_line
        # detect-secrets keeps its plugin list in process-wide settings: set once here, not per text (entering its
        # transient_settings for each text took 85% of a caption's scrubbing time: 1.4 ms against 0.2)
        cache_bust()
        configure_settings_from_baseline({"plugins_used": [{"name": name} for name in SECRET_PLUGINS]})
        self._recognizers = [CreditCardRecognizer(), IbanRecognizer(), EmailRecognizer(), IpRecognizer()]
        self.regions = [r.strip().upper() for r in (region or "").split(",") if r.strip()] or [None]
        unknown = [r for r in self.regions if r is not None and r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone region(s) {', '.join(unknown)}: use two-letter country codes (US, GB, DE)")
        self.min_score = min_score

    def scrub(self, text: str) -> tuple[str, Counter]:
        counts: Counter = Counter()
        text = self._scrub_secrets(text, counts)
        for recognizer in self._recognizers:
            found = recognizer.analyze(text, entities=recognizer.supported_entities, nlp_artifacts=None)
            spans = [(r.start, r.end, r.entity_type) for r in found if r.score >= self.min_score]
            text = _replace(text, spans, counts)
        text = _replace(text, self._phone_spans(text), counts)
        return text, Counter({COUNT_NAMES[kind]: n for kind, n in counts.items()})

    def _phone_spans(self, text: str) -> list[tuple[int, int, str]]:
        """Phone numbers of every region: valid ones, and possible ones grouped as the region writes them."""
        phonenumbers = self._phonenumbers
        spans = []
        for region in self.regions:
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
                number = match.number
                raw = match.raw_string.strip()
                if _DATE.fullmatch(raw) or (not raw.startswith("+") and len(re.sub(r"\D", "", raw)) < MIN_DIGITS):
                    continue
                if phonenumbers.is_valid_number(number) or _grouped_like(match.raw_string, number, phonenumbers):
                    spans.append((match.start, match.end, "PHONE_NUMBER"))
        return spans

    def _scrub_secrets(self, text: str, counts: Counter) -> str:
        lines = text.split("\n")
        for index, line in enumerate(lines):
            values = {secret.secret_value for secret in self._scan_line(line) if secret.secret_value}
            spans = []
            for value in values:
                for match in re.finditer(re.escape(value), line):
                    start, end = match.start(), match.end()
                    while start > 0 and _TOKEN_CHARS.match(line[start - 1]) and line[start - 1] not in ":@":
                        start -= 1
                    while end < len(line) and _TOKEN_CHARS.match(line[end]):
                        end += 1
                    spans.append((start, end, "SECRET"))
            lines[index] = _replace(line, spans, counts)
        return "\n".join(lines)


def _grouped_like(raw: str, number, phonenumbers) -> bool:
    """Whether `raw` has at least 9 digits in two or more groups, grouped exactly as the number's region writes
    it (national or international format)."""
    groups = re.findall(r"\d+", raw)
    if len(groups) < 2 or sum(len(g) for g in groups) < 9:
        return False
    formats = (phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    written = [re.findall(r"\d+", phonenumbers.format_number(number, f)) for f in formats]
    return any(groups == w or groups == w[1:] for w in written)  # with or without the country code


def _presidio_recognizers():
    """presidio-analyzer's pattern recognisers, imported without its transformers NER engine: presidio imports
    `transformers` when it is installed (12 of its 20 s of import), for a pipeline that pattern recognisers never
    use. Hidden only while presidio imports, and only when nothing has imported transformers yet."""
    hide = "transformers" not in sys.modules
    if hide:
        sys.modules["transformers"] = None  # `import transformers` raises ImportError, which presidio tolerates
    try:
        from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                              IpRecognizer)
    finally:
        if hide:
            del sys.modules["transformers"]
    return CreditCardRecognizer, EmailRecognizer, IbanRecognizer, IpRecognizer


def _replace(text: str, spans: list[tuple[int, int, str]], counts: Counter) -> str:
    """Each span replaced by its kind's placeholder; of overlapping spans the first (then the longest) wins."""
    kept: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]))):
        if kept and start < kept[-1][1]:
            continue
        kept.append((start, end, kind))
    for start, end, kind in reversed(kept):
        text = text[:start] + PLACEHOLDERS[kind] + text[end:]
        counts[kind] += 1
    return text
