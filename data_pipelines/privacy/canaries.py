"""Canaries (Carlini et al. 2019, "The Secret Sharer"): random secrets of a fixed format written into training
text a chosen number of times each, so that a memorisation audit can later measure how far the model learned them.

`insert_canaries` copies a caption, chat or text shard set and appends one canary sentence ("the code is 4 8 1 5 9
2") to the text of randomly chosen samples: the caption, the last assistant turn of a chat, the end of a document.
Each secret goes into `repeats` distinct samples, or (`copies=True`) into one sample written `repeats` times, as a
scraped page appears many times in a crawl: duplicates that `mmllm data dedup` can find. The manifest (canaries.json next to the new shards) records every
secret, its repetition count and the samples that carry it, which is what `mmllm audit memorization` reads.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from data_pipelines.read.bad_samples import BadSampleHandler
from data_pipelines.read.shards import KINDS, expand_shards, parse_sample, tar_samples
from data_pipelines.convert.writers import ShardWriter

MANIFEST = "canaries.json"
DEFAULT_FORMAT = "the code is {secret}"


@dataclass
class Canary:
    secret: str  # "4 8 1 5 9 2": digits separated by spaces, so a BPE tokenizer cannot merge them away
    repeats: int
    keys: list[str] = field(default_factory=list)  # the keys of the samples that carry it


@dataclass
class CanaryManifest:
    kind: str
    format: str  # the sentence, with {secret} where the secret goes
    digits: int
    canaries: list[Canary]

    def sentence(self, secret: str) -> str:
        return self.format.format(secret=secret)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CanaryManifest":
        """From canaries.json (or the folder holding it); ValueError naming the file when it is not one."""
        path = Path(path)
        path = path / MANIFEST if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
            return cls(kind=data["kind"], format=data["format"], digits=int(data["digits"]),
                       canaries=[Canary(c["secret"], int(c["repeats"]), list(c["keys"])) for c in data["canaries"]])
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a canary manifest ({error})") from None


def random_secret(digits: int, rng: random.Random) -> str:
    return " ".join(str(rng.randrange(10)) for _ in range(digits))


def append_to_text(kind: str, raw: dict, sentence: str) -> dict:
    """The raw webdataset sample with `sentence` appended to its trained text: a caption's txt, a chat's last
    assistant turn (LLaVA `value` or OpenAI `content`), a document's txt."""
    raw = dict(raw)
    if kind in ("caption", "text"):
        text = raw["txt"].decode("utf-8", errors="replace").rstrip()
        raw["txt"] = (text + (" " if kind == "caption" else "\n") + sentence).encode()
        return raw
    info = json.loads(raw["json"])
    rows = info.get("conversations", info.get("messages"))
    for row in reversed(rows):
        role = row.get("from", row.get("role"))
        if role in ("gpt", "assistant"):
            text_key = "value" if "value" in row else "content"
            row[text_key] = f"{str(row[text_key]).rstrip()} {sentence}"
            break
    else:
        raise ValueError("a chat without an assistant turn cannot carry a canary")
    raw["json"] = json.dumps(info).encode()
    return raw


def insert_canaries(source: str | Path | list, kind: str, out: str | Path, *, secrets_per_count: int = 4,
                    repeats: Sequence[int] = (1, 4, 16), digits: int = 6, sentence_format: str = DEFAULT_FORMAT,
                    seed: int = 0, copies: bool = False, overwrite: bool = False,
                    report: Callable[[str], object] | None = print) -> CanaryManifest:
    """Copy the shards of `source` to `out` with canaries written in; returns (and saves) the manifest.

    `secrets_per_count` secrets for each repetition count in `repeats`; each secret is appended to that many
    distinct samples, never two secrets to one sample; with `copies` to one sample, whose copies (keyed
    KEY-copyN) are written after randomly chosen other samples. Samples that cannot be parsed are copied unchanged (the
    loader will skip and count them as before) and are never chosen.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if "{secret}" not in sentence_format:
        raise ValueError(f"the canary format {sentence_format!r} has no {{secret}}")
    if digits < 1 or secrets_per_count < 1 or not repeats or min(repeats) < 1:
        raise ValueError("canaries need digits >= 1, secrets >= 1 and repetition counts >= 1")
    shards = expand_shards(source)
    handler = BadSampleHandler()
    usable, seen = [], set()  # the keys of the samples a canary may go into
    for raw in tar_samples(shards, handler):
        try:
            sample = parse_sample(kind, raw)
            if kind == "chat" and not any(t["role"] == "assistant" for t in sample.conversation):
                continue
        except ValueError:
            continue
        if raw["__key__"] in seen:
            raise ValueError(f"sample key {raw['__key__']} occurs twice in {source}; canaries are found again by key")
        seen.add(raw["__key__"])
        usable.append(raw["__key__"])
    rng = random.Random(seed)
    needed = secrets_per_count * (len(repeats) if copies else sum(repeats))
    if needed > len(usable):
        raise ValueError(f"{secrets_per_count} secrets at repetitions {list(repeats)} need {needed} samples; "
                         f"{source} has {len(usable)} usable")
    chosen = iter(rng.sample(usable, needed))
    secrets: set[str] = set()
    canaries, carrier = [], {}  # carrier: key -> secret
    copies_after: dict[str, list[str]] = {}  # key -> the keys of the copies written after it
    for count in repeats:
        for _ in range(secrets_per_count):
            secret = random_secret(digits, rng)
            while secret in secrets:
                secret = random_secret(digits, rng)
            secrets.add(secret)
            if copies:
                original = next(chosen)
                places = [original] + [f"{original}-copy{n}" for n in range(1, count)]
                for place in places[1:]:
                    copies_after.setdefault(rng.choice(usable), []).append(place)
            else:
                places = [next(chosen) for _ in range(count)]
            canaries.append(Canary(secret, count, places))
            carrier.update({place: secret for place in places})
    manifest = CanaryManifest(kind=kind, format=sentence_format, digits=digits, canaries=canaries)
    originals = {canary.keys[0]: canary for canary in canaries} if copies else {}
    writer = ShardWriter(out, overwrite=overwrite, report=report)
    with writer:
        for raw in _with_copies(tar_samples(shards, BadSampleHandler()), originals, copies_after):
            secret = carrier.get(raw["__key__"])
            if secret is not None:
                raw = append_to_text(kind, raw, manifest.sentence(secret))
            members = {ext: value for ext, value in raw.items() if not ext.startswith("__")}
            writer.write(members, key=raw["__key__"])
    manifest_path = manifest.save(out)
    if report is not None:
        where = f"{needed} samples, each written as often as its secret repeats" if copies else f"{needed} samples"
        report(f"canaries: {len(canaries)} secrets ({secrets_per_count} each at {', '.join(map(str, repeats))} "
               f"repetitions) in {where}; manifest {manifest_path}")
    return manifest


def _with_copies(raws, originals: dict[str, Canary], copies_after: dict[str, list[str]]):
    """The raw samples in order, each followed by the canary copies scheduled after it. A copy is its original's
    members under the copy's key; copies scheduled before their original was read wait until it has been."""
    members: dict[str, dict] = {}  # original key -> its raw sample
    waiting: list[str] = []
    for raw in raws:
        yield raw
        key = raw["__key__"]
        if key in originals:
            members[key] = raw
        waiting += copies_after.get(key, [])
        still = []
        for copy in waiting:
            original = copy.rsplit("-copy", 1)[0]
            if original in members:
                yield {**members[original], "__key__": copy}
            else:
                still.append(copy)
        waiting = still



def carriers(manifest: CanaryManifest) -> dict[str, str]:
    """key -> secret of every sample that carries a canary."""
    return {key: canary.secret for canary in manifest.canaries for key in canary.keys}
