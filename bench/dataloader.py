"""Data loader throughput: samples/s for caption and chat shards with 0, 1 and 2 workers, and time per stage.

Run by hand: `python bench/dataloader.py [--samples 1024] [--image-size 64]` writes shapes shards to a temporary
folder; `--data DIR --kind caption|chat|text [--tokenizer FILE]` measures your own shards instead. Prints one
JSON object, with the skipped samples by reason. Stage times are milliseconds per sample, in one process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from data_pipelines.batching import collate
from data_pipelines.chat.tokenizer import load_tokenizer, train_tokenizer
from data_pipelines.convert.shapes import generate_split
from data_pipelines.processor import Processor
from data_pipelines.read.bad_samples import BadSampleCounter, BadSampleHandler
from data_pipelines.read.loader import make_loader
from data_pipelines.read.shards import decode_samples, load_shard_set, parse_samples, shard_texts, tar_samples


def loader_throughput(source: dict, processor: Processor, batch_size: int, num_workers: int,
                      skipped: BadSampleCounter) -> float:
    """Samples per second over one epoch, worker start-up included; skipped samples are added to `skipped`."""
    loader = make_loader([source], processor, batch_size=batch_size, num_workers=num_workers, shuffle_buffer=256)
    start = time.perf_counter()
    samples = sum(len(skipped.absorb(batch)["kinds"]) for batch in loader)
    return samples / (time.perf_counter() - start)


def stage_times(kind: str, folder: Path, processor: Processor, batch_size: int) -> dict[str, float]:
    """Milliseconds per read sample of each stage, run one after the other over every sample of the source
    (through the loader's own stages, so bad samples are skipped and counted as in training)."""
    handler = BadSampleHandler()
    times = {}

    def timed(name, run):
        start = time.perf_counter()
        result = run()
        times[name] = (time.perf_counter() - start) * 1000
        return result

    raws = timed("read", lambda: list(tar_samples(load_shard_set(folder).shards, handler)))
    samples = timed("parse", lambda: list(parse_samples(raws, kind, handler)))
    decoded = timed("decode", lambda: list(decode_samples(samples, handler)))
    timed("preprocess", lambda: [processor.pixel_values(sample.images) for sample in decoded])
    if kind != "text":
        timed("tokenize", lambda: [processor.template.render(sample.conversation, len(sample.images))
                                   for sample in decoded])
    encoded = []
    for sample in decoded:
        try:
            encoded.append(processor.encode_sample(sample))
        except ValueError as error:  # nothing to learn, markers that do not match: counted as in training
            handler(error)
    batches = [encoded[i:i + batch_size] for i in range(0, len(encoded), batch_size)]
    timed("collate", lambda: [collate(batch, processor.pad_id) for batch in batches])
    return {name: round(ms / max(1, len(raws)), 4) for name, ms in times.items()}


def measure(folders: dict[str, Path], processor: Processor, args: argparse.Namespace) -> dict:
    result = {"samples_per_s": {}, "stage_ms_per_sample": {}}
    skipped = BadSampleCounter()
    for kind, folder in folders.items():
        source = {"kind": kind, "path": str(folder)}
        result["samples_per_s"][kind] = {
            f"workers_{n}": round(loader_throughput(source, processor, args.batch_size, n, skipped), 1)
            for n in (0, 1, 2)}
        result["stage_ms_per_sample"][kind] = stage_times(kind, folder, processor, args.batch_size)
    result["skipped_samples"] = dict(skipped.counts)  # over the three loader passes
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024, help="shapes samples to generate (without --data)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", type=Path, help="your own shards (a folder) instead of generated shapes shards")
    parser.add_argument("--kind", choices=("caption", "chat", "text"), default="caption", help="the kind of --data")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json for --data (default: trained on it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            generate_split(tmp, "train", args.samples, image_size=args.image_size, maxcount=128, report=None)
            folders = {"caption": Path(tmp) / "train" / "captions", "chat": Path(tmp) / "train" / "chat"}
        else:
            folders = {args.kind: args.data}
        if args.tokenizer is not None:
            tokenizer, _ = load_tokenizer(args.tokenizer)
        else:
            shards = load_shard_set(next(iter(folders.values()))).shards
            tokenizer = train_tokenizer(itertools.islice(shard_texts(shards), 1000), vocab_size=512)
        processor = Processor(tokenizer, image_size=args.image_size, tokens_per_image=16)
        result = {"data": str(args.data) if args.data else "generated shapes", "samples": args.samples,
                  "image_size": args.image_size, "batch_size": args.batch_size, **measure(folders, processor, args)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
