"""Shard lists: a folder of shards or a brace pattern -> the shard paths and their sample counts.

A source's `path` is a folder (`data/shapes/train/chat`, every `*.tar` in it, sorted), a brace pattern
(`data/caps/{00000..00127}.tar`), a single `.tar` file, or a list of those. Sample counts come from the
`sizes.json` next to the shards (written by every writer); a shard missing from it is counted by reading
its tar headers, so a loader always knows its length.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import braceexpand

SIZES_FILE = "sizes.json"


@dataclass(frozen=True)
class ShardSet:
    """The shards of one source, in a fixed order, with the sample count of each."""

    shards: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)

    def __len__(self) -> int:
        return len(self.shards)


def load_shard_set(path: str | os.PathLike | list) -> ShardSet:
    """Shards and sample counts of a folder, brace pattern, `.tar` file or list of those."""
    shards = expand_shards(path)
    folder_sizes: dict[str, dict[str, int]] = {}  # each sizes.json is read once
    return ShardSet(tuple(shards), tuple(shard_size(shard, folder_sizes) for shard in shards))


def expand_shards(path: str | os.PathLike | list) -> list[str]:
    """Shard paths of a folder (its `*.tar`, sorted), a brace pattern, a `.tar` file, or a list of those."""
    if isinstance(path, (list, tuple)):
        return [shard for item in path for shard in expand_shards(item)]
    path = os.fspath(path)
    if os.path.isdir(path):
        shards = sorted(str(p) for p in Path(path).glob("*.tar"))
        if not shards:
            raise FileNotFoundError(f"no .tar shards in folder {path}")
        return shards
    shards = list(braceexpand.braceexpand(path))
    missing = [shard for shard in shards if not os.path.isfile(shard)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard {missing[0]} of {path} does not exist{more}")
    return shards


def shard_size(shard: str, folder_sizes: dict[str, dict[str, int]] | None = None) -> int:
    """Samples in one shard: from the `sizes.json` in its folder, else by counting the keys in the tar."""
    folder = os.path.dirname(os.path.abspath(shard))
    folder_sizes = {} if folder_sizes is None else folder_sizes
    if folder not in folder_sizes:
        folder_sizes[folder] = read_sizes(folder)
    sizes = folder_sizes[folder]
    name = os.path.basename(shard)
    return sizes[name] if name in sizes else count_tar_samples(shard)


def read_sizes(folder: str) -> dict[str, int]:
    """A folder's `sizes.json` ({shard file name: samples}); empty when the folder has none."""
    sizes_path = os.path.join(folder, SIZES_FILE)
    if not os.path.isfile(sizes_path):
        return {}
    with open(sizes_path, encoding="utf-8") as f:
        sizes = json.load(f)
    if not isinstance(sizes, dict) or not all(isinstance(n, int) for n in sizes.values()):
        raise ValueError(f"{sizes_path} must map shard file names to sample counts")
    return sizes


def count_tar_samples(shard: str) -> int:
    """Distinct sample keys (member names up to the first dot) in a tar file, read from its headers only."""
    keys = set()
    try:
        with tarfile.open(shard, mode="r:*") as tar:
            for member in tar:
                if member.isreg():
                    keys.add(_sample_key(member.name))
    except tarfile.ReadError:
        pass  # a truncated shard: count what is readable; the loader skips the rest as bad samples
    return len(keys)


def _sample_key(name: str) -> str:
    folder, _, base = name.rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]
