"""The strings the SmolLM2 tokenizer tests compare on: 40 chosen by hand (unicode, digits, code, runs of spaces
and newlines, special tokens) and 180 built from pieces of those kinds with a fixed seed."""

from __future__ import annotations

import random

CHOSEN = [
    "Hello, world!", "The capital of Japan is Tokyo.", "naïve café résumé coöperate", "Ünïcödé  🙂 emoji 🚀🔥",
    "日本語のテキスト、東京。", "中文分词测试", "Привет, мир!", "مرحبا بالعالم", "नमस्ते दुनिया", "한국어 문장입니다",
    "1234567890", "3.14159265358979", "1,000,000 and 2,500.75", "2026-12-05T19:30:00Z", "x1y22z333",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { sum += a[i]; }", "SELECT * FROM users WHERE id = 42;", "<div class=\"x\">&amp;</div>",
    "import torch\nimport numpy as np\n", "a  b   c    d", "     leading spaces", "trailing spaces     ", "\t\ttabs\tand\tmore",
    "\n\n\nthree newlines", "line one\r\nline two", " \n \n ", "   \n\n   \n", "",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "text<|endoftext|>more",
    "<|im_end|><|im_start|>", "<repo_name>mmllm<file_sep>README.md", "<|im_start|>system\nYou are helpful.<|im_end|>",
    "I'm sure you'll see they've gone", "don't DON'T Don't", "email@example.com https://example.org/a?b=c",
    "¡¿Qué?! «quotes» “curly” ‘single’", "∑∫√∞≈≠ ±×÷ αβγ",
]
PIECES = ["hello", "world", "Tokyo", "42", "007", "3.5", "1999", "x = y + 1", "def f():", "return", "café", "日本",
          "🙂", "Ω", "<|im_end|>", "<|im_start|>", "<|endoftext|>", "'s", "don't", "(", ")", "{", "}", "naïve", "ß",
          "  ", "\t", "::", "->", "==", "#", "//", "ñ", "Γειά", "¿"]
SEPARATORS = [" ", "", "  ", "\n", "\n\n", "\t", " \n", "   "]


def strings() -> list[str]:
    rng = random.Random(0)
    built = []
    for _ in range(180):
        parts = [rng.choice(PIECES) for _ in range(rng.randint(1, 8))]
        built.append("".join(part + rng.choice(SEPARATORS) for part in parts))
    return CHOSEN + built
