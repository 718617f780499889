"""Personal data and secrets in text, replaced by typed placeholders before it is written into shards (`--scrub-pii`).

Detection is left to maintained libraries, not to regexes of our own:
- detect-secrets (Yelp): API keys and tokens (AWS, GitHub, Slack, Stripe, JWTs, private keys), passwords after a
  keyword, and the password of a URL's user:password@ -> <SECRET>
- presidio-analyzer's pattern recognisers, which need no spaCy model: credit-card numbers (with their Luhn check)
  -> <CREDIT_CARD>, IBANs (with their checksum) -> <IBAN>, e-mail addresses -> <EMAIL>, IPv4/IPv6 -> <IP_ADDRESS>
- phonenumbers (Google's libphonenumber): phone numbers in international form, or national form under
  `region` -> <PHONE>

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


class PIIScrubber:
    """`scrub(text) -> (text with placeholders, Counter of replacements by kind)`; libraries imported on creation.

    region: the phone region for numbers written without a country code ("US", "GB"; None: international
    numbers only).
    """

    def __init__(self, region: str | None = None, min_score: float = 0.5) -> None:
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
        self.region, self.min_score = region, min_score

    def scrub(self, text: str) -> tuple[str, Counter]:
        counts: Counter = Counter()
        text = self._scrub_secrets(text, counts)
        for recognizer in self._recognizers:
            found = recognizer.analyze(text, entities=recognizer.supported_entities, nlp_artifacts=None)
            spans = [(r.start, r.end, r.entity_type) for r in found if r.score >= self.min_score]
            text = _replace(text, spans, counts)
        matcher = self._phonenumbers.PhoneNumberMatcher(text, self.region)
        text = _replace(text, [(m.start, m.end, "PHONE_NUMBER") for m in matcher], counts)
        return text, Counter({COUNT_NAMES[kind]: n for kind, n in counts.items()})

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
