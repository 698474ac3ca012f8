import pytest

from a2d.files import InputError, read_lines, write_lines
from a2d.shards import merge, shard_bounds, split


def test_bounds_cover_every_line_once():
    for count, shards in ((10, 3), (7, 7), (100, 1), (5, 2)):
        bounds = shard_bounds(count, shards)
        assert bounds[0][0] == 0 and bounds[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_split_then_merge_restores_order_and_line_count(tmp_path):
    source = [f"sentence {i}" for i in range(11)]
    write_lines(tmp_path / "train.src", source)
    shards = [str(tmp_path / f"s{i}.src") for i in range(3)]
    split(str(tmp_path / "train.src"), shards)
    assert [len(read_lines(p)) for p in shards] == [3, 4, 4]
    outputs = []
    for i, path in enumerate(shards):  # a stand-in "translation" that keeps each line's identity
        outputs.append(str(tmp_path / f"s{i}.hyp"))
        write_lines(outputs[-1], [line.upper() for line in read_lines(path)])
    merge(str(tmp_path / "train.src"), shards, outputs, str(tmp_path / "m.src"), str(tmp_path / "m.tgt"))
    assert read_lines(tmp_path / "m.src") == source
    assert read_lines(tmp_path / "m.tgt") == [line.upper() for line in source]


def test_merge_refuses_a_short_shard_and_writes_nothing(tmp_path):
    write_lines(tmp_path / "train.src", ["a", "b", "c", "d"])
    shards = [str(tmp_path / "s0.src"), str(tmp_path / "s1.src")]
    split(str(tmp_path / "train.src"), shards)
    write_lines(tmp_path / "s0.hyp", ["A", "B"])
    write_lines(tmp_path / "s1.hyp", ["C"])
    with pytest.raises(InputError, match="s1.hyp has 1 lines but its shard .*s1.src has 2"):
        merge(str(tmp_path / "train.src"), shards, [str(tmp_path / "s0.hyp"), str(tmp_path / "s1.hyp")],
              str(tmp_path / "m.src"), str(tmp_path / "m.tgt"))
    assert not (tmp_path / "m.src").exists() and not (tmp_path / "m.tgt").exists()
