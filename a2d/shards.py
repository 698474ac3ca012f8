"""Splitting a corpus into shards for parallel jobs and merging their outputs back in order
(sequence-level KD: the teacher translates the training sources shard by shard)."""

from __future__ import annotations

from a2d.files import InputError, read_lines, write_lines


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) line ranges of `shards` near-equal parts of `count` lines."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    return [(count * i // shards, count * (i + 1) // shards) for i in range(shards)]


def split(input_path: str, output_paths: list[str]) -> None:
    lines = read_lines(input_path)
    if len(output_paths) > len(lines):
        raise InputError(f"{input_path}: {len(lines)} lines cannot fill {len(output_paths)} shards")
    for path, (start, end) in zip(output_paths, shard_bounds(len(lines), len(output_paths))):
        write_lines(path, lines[start:end])


def merge(source_path: str, shard_sources: list[str], shard_outputs: list[str], src_output: str, tgt_output: str) -> None:
    """Concatenate shard outputs in shard order into a parallel corpus with the original sources.

    Every shard output must have as many lines as its shard source, and the shard sources must
    concatenate to the original: then line i of the result translates line i of the source.
    """
    source = read_lines(source_path)
    merged_sources, merged_outputs = [], []
    for shard_src, shard_out in zip(shard_sources, shard_outputs, strict=True):
        src, out = read_lines(shard_src), read_lines(shard_out)
        if len(src) != len(out):
            raise InputError(f"{shard_out} has {len(out)} lines but its shard {shard_src} has {len(src)}")
        merged_sources += src
        merged_outputs += out
    if merged_sources != source:
        raise InputError(f"the shards {', '.join(map(str, shard_sources))} do not add up to {source_path}")
    write_lines(src_output, source)
    write_lines(tgt_output, merged_outputs)
