"""Data loader throughput: samples/s for caption and chat shards with 0, 1 and 2 workers, and time per stage.

Run by hand: `python bench/dataloader.py [--samples 1024] [--image-size 64]`. Writes shapes shards to a temporary
folder, then prints one JSON object. Stage times are milliseconds per sample, measured in one process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from data_pipelines.bad_samples import BadSampleHandler
from data_pipelines.loader import make_loader
from data_pipelines.processor import Processor, collate
from data_pipelines.shapes import generate_split
from data_pipelines.shards import decode_sample, load_shard_set, parse_sample, tar_samples
from data_pipelines.tokenizer import record_texts, train_tokenizer


def loader_throughput(source: dict, processor: Processor, batch_size: int, num_workers: int) -> float:
    """Samples per second over one epoch, worker start-up included."""
    loader = make_loader([source], processor, batch_size=batch_size, num_workers=num_workers, shuffle_buffer=256)
    start = time.perf_counter()
    samples = sum(len(batch["kinds"]) for batch in loader)
    return samples / (time.perf_counter() - start)


def stage_times(kind: str, folder: Path, processor: Processor, batch_size: int) -> dict[str, float]:
    """Milliseconds per sample of each stage, run one after the other over every sample of the source."""
    handler = BadSampleHandler()
    times = {}

    def timed(name, run):
        start = time.perf_counter()
        result = run()
        times[name] = (time.perf_counter() - start) * 1000
        return result

    raws = timed("read", lambda: list(tar_samples(load_shard_set(folder).shards, handler)))
    samples = timed("parse", lambda: [parse_sample(kind, raw) for raw in raws])
    decoded = timed("decode", lambda: [decode_sample(sample) for sample in samples])
    timed("preprocess", lambda: [processor.pixel_values(sample.images) for sample in decoded])
    timed("tokenize", lambda: [processor.template.render(sample.conversation, len(sample.images))
                               for sample in decoded])
    encoded = [processor.encode_sample(sample) for sample in decoded]
    batches = [encoded[i:i + batch_size] for i in range(0, len(encoded), batch_size)]
    timed("collate", lambda: [collate(batch, processor.pad_id) for batch in batches])
    return {name: round(ms / len(raws), 4) for name, ms in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate_split(tmp, "train", args.samples, image_size=args.image_size, maxcount=128, report=None)
        folders = {"caption": Path(tmp) / "train" / "captions", "chat": Path(tmp) / "train" / "chat"}
        raws = itertools.islice(tar_samples(load_shard_set(folders["chat"]).shards, BadSampleHandler()), 256)
        tokenizer = train_tokenizer((text for raw in raws for text in record_texts(raw)), vocab_size=512)
        processor = Processor(tokenizer, image_size=args.image_size, tokens_per_image=16)
        result = {"samples": args.samples, "image_size": args.image_size, "batch_size": args.batch_size,
                  "samples_per_s": {}, "stage_ms_per_sample": {}}
        for kind, folder in folders.items():
            source = {"kind": kind, "path": str(folder)}
            result["samples_per_s"][kind] = {
                f"workers_{n}": round(loader_throughput(source, processor, args.batch_size, n), 1) for n in (0, 1, 2)}
            result["stage_ms_per_sample"][kind] = stage_times(kind, folder, processor, args.batch_size)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
