"""The local spool's file format: ordered, durable, bounded, and honest about torn writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from calguard.alerts.spool import SPOOL_MAGIC, Spool, SpoolError


def drain(spool: Spool) -> list[bytes]:
    out = []
    while (record := spool.next()) is not None:
        out.append(record.payload)
        spool.consumed(record)
    return out


def test_records_come_back_in_order_across_segments_and_drained_segments_go(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20, segment_bytes=4096)
    payloads = [f"batch {i} ".encode() * 40 for i in range(60)]  # ~25 segments of 4 KiB
    for p in payloads:
        spool.append(p)
    assert spool.pending == 60 and len(list((tmp_path / "spool").glob("*.spool"))) > 5
    assert drain(spool) == payloads
    assert spool.pending == 0 and list((tmp_path / "spool").iterdir()) == []
    spool.append(b"after")  # a fresh segment once everything was drained
    assert drain(spool) == [b"after"]
    spool.close()


def test_a_restarted_process_finds_what_was_not_drained(tmp_path: Path) -> None:
    first = Spool(tmp_path, 1 << 20, segment_bytes=2048)
    for i in range(10):
        first.append(b"x" * 300 + bytes([i]))
    for _ in range(4):
        record = first.next()
        assert record is not None
        first.consumed(record)
    first.close()  # the process dies here: four drained, six waiting
    second = Spool(tmp_path, 1 << 20, segment_bytes=2048)
    second.open()
    left = drain(second)
    # the drained records of a still-open segment come back too: the log's batch numbers
    # make writing them twice harmless
    assert [p[-1] for p in left][-6:] == list(range(4, 10))
    second.close()


def test_a_record_torn_by_a_crash_is_cut_off_at_the_next_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(b"whole")
    spool.append(b"torn, never acknowledged")
    spool.close()
    (segment,) = tmp_path.glob("*.spool")
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # the power went during the last write
    again = Spool(tmp_path, 1 << 20)
    again.open()
    assert again.pending == 1 and drain(again) == [b"whole"]
    again.close()


def test_a_full_spool_refuses_loudly_and_takes_again_once_drained(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 4096, segment_bytes=1024)
    for _ in range(19):  # 19 records of 208 bytes, 4 segment headers: 4 KiB
        spool.append(b"y" * 200)
    with pytest.raises(SpoolError, match="is full"):
        spool.append(b"y" * 200)
    assert spool.size <= 4096
    drain(spool)
    spool.append(b"y" * 200)
    assert spool.pending == 1
    spool.close()


def test_damage_inside_the_spool_is_kept_aside_and_the_rest_still_drains(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, 1 << 20, segment_bytes=1024)
    for i in range(8):
        spool.append(bytes([i]) * 300)  # three records a segment
    spool.close()
    first = sorted(tmp_path.glob("*.spool"))[0]
    data = bytearray(first.read_bytes())
    data[len(SPOOL_MAGIC) + 400] ^= 0xFF  # bit rot inside the second record
    first.write_bytes(bytes(data))
    reopened = Spool(tmp_path, 1 << 20, segment_bytes=1024)
    reopened.open()
    left = [p[0] for p in drain(reopened)]
    assert left == [0, 3, 4, 5, 6, 7]  # records 1 and 2 sit after the damage: not guessed at
    assert [p.suffix for p in tmp_path.iterdir()] == [".damaged"]
    reopened.close()


def test_something_else_in_the_spool_directory_is_not_taken_for_a_segment(
    tmp_path: Path,
) -> None:
    (tmp_path / "000000000001.spool").write_bytes(b"not a spool at all")
    with pytest.raises(SpoolError, match="not a CalGuard spool segment"):
        Spool(tmp_path, 1 << 20).open()
