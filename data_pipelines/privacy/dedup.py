"""Exact and near-duplicate samples across shards: MinHash over text, a perceptual hash over images.

Duplicated training data is what a model memorises first (Carlini et al. 2022, Kandpal et al. 2022). Two samples
are near-duplicates of text when the Jaccard similarity of their character 5-gram sets, estimated by a 128-permutation
MinHash (datasketch, with its LSH index to find candidates), is at least `text_threshold`; of image when the Hamming
distance between their 64-bit DCT perceptual hashes (ImageHash's phash) is at most `image_distance` bits. A
caption or chat sample duplicates another when both hold (`by="both"`, the default: the same picture with the
same words), or either one alone (`by="image"`, `by="text"`). Clusters are the connected groups of duplicate
pairs; deduplication keeps each cluster's first sample in shard order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Literal

from data_pipelines.read.shards import Sample

By = Literal["both", "image", "text"]
SHINGLE = 5  # characters
NUM_PERM = 128
BANDS = 8  # the 64-bit image hash cut into 8 bands of 8 bits: two hashes within 7 bits share a band


def sample_id(sample: Sample) -> str:
    """SHARD:KEY, which names a sample even when two shards use the same keys."""
    return f"{sample.meta.get('url')}:{sample.key}"


def sample_text(sample: Sample) -> str:
    """What a sample says: a document, or every turn of a caption or chat (image markers left out)."""
    if sample.kind == "text":
        return sample.text
    return "\n".join(turn["content"].replace("<image>", "") for turn in sample.conversation)


def shingles(text: str) -> set[str]:
    """Character 5-grams of the lowercased text with runs of whitespace as one space (short texts: the whole)."""
    text = re.sub(r"\s+", " ", text.lower()).strip()
    if len(text) <= SHINGLE:
        return {text}
    return {text[i:i + SHINGLE] for i in range(len(text) - SHINGLE + 1)}


@dataclass
class DuplicateReport:
    samples: int
    clusters: list[list[str]] = field(default_factory=list)  # sample ids (SHARD:KEY) per cluster of 2+, first kept
    text_pairs: int = 0
    image_pairs: int = 0
    by: str = "both"

    @property
    def duplicates(self) -> int:
        """Samples deduplication removes."""
        return sum(len(cluster) - 1 for cluster in self.clusters)

    def removed(self) -> set[str]:
        return {key for cluster in self.clusters for key in cluster[1:]}

    def to_dict(self) -> dict:
        return {"samples": self.samples, "by": self.by, "duplicates": self.duplicates,
                "clusters": len(self.clusters), "largest_cluster": max(map(len, self.clusters), default=0),
                "text_pairs": self.text_pairs, "image_pairs": self.image_pairs,
                "largest_clusters": sorted(self.clusters, key=len, reverse=True)[:20]}


def find_duplicates(samples: Iterable[Sample], *, by: By = "both", text_threshold: float = 0.8,
                    image_distance: int = 4) -> DuplicateReport:
    """Duplicate clusters among samples whose images are decoded PIL images (or bytes: hashed after decoding)."""
    try:
        import imagehash
        from datasketch import MinHash, MinHashLSH
    except ImportError as error:
        raise ImportError(f"deduplication needs datasketch and ImageHash: pip install 'mmllm[privacy]' "
                          f"({error.name} is missing)") from error
    if not 0 < text_threshold <= 1 or not 0 <= image_distance < BANDS:
        raise ValueError(f"text_threshold must be in (0, 1] and image_distance in 0..{BANDS - 1}")
    keys, hashes, minhashes = [], [], []
    lsh = MinHashLSH(threshold=text_threshold, num_perm=NUM_PERM)
    for index, sample in enumerate(samples):
        keys.append(sample_id(sample))
        minhash = MinHash(num_perm=NUM_PERM)
        minhash.update_batch([s.encode("utf-8") for s in shingles(sample_text(sample))])
        minhashes.append(minhash)
        lsh.insert(str(index), minhash)
        hashes.append(int(str(imagehash.phash(_image(sample.images[0]))), 16) if sample.images else None)
    text_pairs = {(min(i, j), max(i, j)) for i in range(len(keys)) for j in map(int, lsh.query(minhashes[i]))
                  if i != j and minhashes[i].jaccard(minhashes[j]) >= text_threshold}
    image_pairs = _close_hashes(hashes, image_distance)
    if by == "both":
        pairs = text_pairs & image_pairs if any(h is not None for h in hashes) else text_pairs
    elif by == "image":
        pairs = image_pairs
    elif by == "text":
        pairs = text_pairs
    else:
        raise ValueError(f"unknown duplicate criterion {by!r}; choose both, image or text")
    clusters = [[keys[i] for i in members] for members in _components(len(keys), pairs)]
    return DuplicateReport(samples=len(keys), clusters=clusters, text_pairs=len(text_pairs),
                           image_pairs=len(image_pairs), by=by)


def _image(image):
    if isinstance(image, (bytes, bytearray)):
        from data_pipelines.images import load_image

        return load_image(bytes(image))
    return image


def _close_hashes(hashes: list[int | None], distance: int) -> set[tuple[int, int]]:
    """Index pairs whose hashes differ in at most `distance` bits, found through bands of 8 bits that a close pair
    must share (pigeonhole) instead of comparing every pair."""
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, value in enumerate(hashes):
        if value is not None:
            for band in range(BANDS):
                buckets[band, (value >> (8 * band)) & 0xFF].append(index)
    pairs = set()
    for members in buckets.values():
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1:]:
                if bin(hashes[a] ^ hashes[b]).count("1") <= distance:
                    pairs.add((a, b))
    return pairs


def _components(count: int, pairs: set[tuple[int, int]]) -> list[list[int]]:
    """Connected groups of 2+ indices (union-find), each sorted, in order of their first member."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = defaultdict(list)
    for index in range(count):
        groups[root(index)].append(index)
    return sorted((members for members in groups.values() if len(members) > 1), key=lambda m: m[0])


def write_deduplicated(source, out, removed: set[str], *, overwrite: bool = False, scrub=None, report=print):
    """Copy the shards of `source` to `out` without the samples named in `removed` (sample ids); everything else,
    unreadable samples included, is copied unchanged, its text scrubbed by `scrub` when given (the ShardWriter's
    scrub function, --scrub-pii). Returns the writer's stats."""
    from data_pipelines.read.bad_samples import BadSampleHandler
    from data_pipelines.read.shards import expand_shards, tar_samples
    from data_pipelines.convert.writers import ShardWriter

    with ShardWriter(out, overwrite=overwrite, report=report, scrub=scrub) as writer:
        used: set[str] = set()
        for raw in tar_samples(expand_shards(source), BadSampleHandler()):
            if f"{raw['__url__']}:{raw['__key__']}" in removed:
                writer.skip("duplicate")
                continue
            base = re.sub(r"[^A-Za-z0-9_-]", "_", raw["__key__"])  # another tool's keys may hold slashes
            key, n = base, 1
            while key in used:  # two shards of another tool may reuse keys: keep both samples
                key, n = f"{base}-{n}", n + 1
            used.add(key)
            writer.write({ext: value for ext, value in raw.items() if not ext.startswith("__")}, key=key)
    return writer.stats
