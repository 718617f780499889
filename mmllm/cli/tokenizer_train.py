"""Train a byte-level BPE tokenizer on the text of webdataset shards (captions, chat turns, text documents).

Every *.tar under each --data folder (searched recursively) is read: KEY.txt members and the captions /
conversation turns of KEY.json members. The project's special tokens get the first ids. Samples that cannot be
read (text that is not UTF-8, broken JSON, a shard cut short) are skipped and counted, as in training.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mmllm.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of shards (searched recursively)")
    parser.add_argument("--vocab-size", type=int, required=True, metavar="N", help="vocabulary size, special tokens included")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write tokenizer.json")
    parser.add_argument("--tokens", choices=("mmllm", "smolvlm"), default="mmllm",
                        help="smolvlm: also SmolVLM's tokens (<image>, <end_of_utterance>, the image markup, "
                             "<row_i_col_j>, one \\n\\n token), for a model trained with data.chat_template smolvlm "
                             "that exports to transformers and llama.cpp (default mmllm)")
    parser.add_argument("--min-frequency", type=int, default=2, metavar="N", help="least count of a merged pair (default 2)")


def run(args) -> int:
    # imported here, not at the top: `mmllm --help` loads every command module (and the shard reader imports
    # webdataset, which imports torch: 1.4 s)
    from data_pipelines.chat.tokenizer import train_tokenizer, vocab_size
    from data_pipelines.read.bad_samples import BadSampleHandler
    from data_pipelines.read.shards import UnreadableShard, find_shards, shard_texts

    try:
        shards = find_shards(args.data)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    if not shards:
        raise UsageError(f"no *.tar shards under {' '.join(args.data)}")
    stats: Counter = Counter()
    handler = BadSampleHandler()
    try:
        tokenizer = train_tokenizer(shard_texts(shards, handler, stats), args.vocab_size, args.min_frequency,
                                    args.tokens)
    except (UnreadableShard, ValueError) as error:
        raise UsageError(str(error)) from error
    if not stats["texts"]:
        raise UsageError(f"the {len(shards)} shards under {' '.join(args.data)} hold no text (.txt or .json members)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    print(
        f"read {stats['shards']} shards, {stats['records']} samples, {stats['texts']} texts, {stats['chars']} characters"
    )
    if handler.total:
        print(handler.summary())
    print(f"vocab size {vocab_size(tokenizer)}; wrote {out}")
    return 0
