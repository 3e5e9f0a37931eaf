"""The NE-1000 protocol, byte for byte, and a frame parser that survives any line noise."""

from __future__ import annotations

import pytest
from calguard.drivers.ne1000 import (
    FrameParser,
    Garbage,
    crc16_xmodem,
    encode_basic_command,
    encode_safe_packet,
    format_number,
    parse_response,
    parse_volume,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def test_the_manuals_safe_mode_example_packet() -> None:
    # manual 1200-01 section 10: "(0x2) (0x8) SAF0 (0x55) (0x43) (0x3)"
    assert crc16_xmodem(b"SAF0") == 0x5543
    assert encode_safe_packet(b"SAF0") == bytes.fromhex("02 08 53 41 46 30 55 43 03")


def test_crc16_xmodem_check_value() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3  # the catalogued check value of CRC-16/XMODEM
    assert crc16_xmodem(b"") == 0x0000  # initial value 0, no final XOR


def crc_by_definition(data: bytes) -> int:
    """The protocol's CRC from its definition, slowly: the remainder of the message, as a
    polynomial over GF(2) with the first byte's high bit highest, times x^16, divided by
    the CCITT polynomial x^16 + x^12 + x^5 + 1 (initial value 0, no reflection, no final
    XOR: CRC-16/XMODEM)."""
    remainder = int.from_bytes(data, "big") << 16
    generator = 0x1_1021
    while remainder.bit_length() > 16:
        remainder ^= generator << (remainder.bit_length() - 17)
    return remainder


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300))
def test_the_crc_is_the_protocols_definition(data: bytes) -> None:
    assert crc16_xmodem(data) == crc_by_definition(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=1, max_size=76))
def test_a_safe_packet_carries_its_length_and_crc_high_byte_first(data: bytes) -> None:
    packet = encode_safe_packet(data)
    crc = crc_by_definition(data)
    assert packet == bytes([0x02, len(data) + 4]) + data + bytes([crc >> 8, crc & 0xFF, 0x03])
    assert packet[1] == len(packet) - 1  # the length counts every byte after STX


def test_the_manual_examples_by_definition() -> None:
    assert crc_by_definition(b"SAF0") == 0x5543
    assert crc_by_definition(b"123456789") == 0x31C3


def test_basic_commands() -> None:
    assert encode_basic_command(0, "RAT") == b"0RAT\r"
    assert encode_basic_command(12, "") == b"12\r"
    assert encode_basic_command(None, "DIS") == b"DIS\r"


@pytest.mark.parametrize(
    ("data", "address", "status", "alarm", "extra"),
    [
        (b"00SI1.250W0.000ML", 0, "stopped", None, ("volume", "1.250 ml")),
        (b"01I2.500MH", 1, "infusing", None, ("rate", "2.500 ml/h")),
        (b"07P500.0UH", 7, "paused", None, ("rate", "500.0 ul/h")),
        (b"00A?S", 0, None, "occlusion", None),
        (b"00A?R", 0, None, "reset", None),
        (b"03S?OOR", 3, "stopped", None, ("error", "?OOR")),
        (b"99X", 99, "purging", None, None),
    ],
)
def test_responses(
    data: bytes, address: int, status: str | None, alarm: str | None, extra: tuple[str, str] | None
) -> None:
    r = parse_response(data)
    assert (r.address, r.status, r.alarm) == (address, status, alarm)
    if extra and extra[0] == "volume":
        assert parse_volume(r.data) == extra[1]
    if extra and extra[0] == "rate":
        assert r.rate() == extra[1]
    if extra and extra[0] == "error":
        assert r.error == extra[1]


@pytest.mark.parametrize("data", [b"", b"0", b"AAI", b"00Q", b"00A?Z", b"00I\xff", b"00I\x01"])
def test_not_responses(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        parse_response(data)


@pytest.mark.parametrize(
    ("value", "text"), [(0.5, "0.500"), (2.5, "2.500"), (500.0, "500.0"), (9999, "9999")]
)
def test_numbers_have_at_most_four_digits(value: float, text: str) -> None:
    assert format_number(value) == text


def frames(safe: bool, bodies: list[bytes]) -> list[bytes]:
    return [encode_safe_packet(b) if safe else b"\x02" + b + b"\x03" for b in bodies]


bodies = st.lists(
    st.builds(
        lambda a, s, d: f"{a:02d}{s}{d}".encode(),
        st.integers(0, 99),
        st.sampled_from("IWSPTUX"),
        st.sampled_from(["", "2.500MH", "I1.250W0.000ML", "?OOR"]),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    safe=st.booleans(),
    bodies=bodies,
    noise=st.lists(st.binary(max_size=12), max_size=9),
    data=st.data(),
)
def test_valid_frames_survive_noise_and_any_split(
    safe: bool, bodies: list[bytes], noise: list[bytes], data: st.DataObject
) -> None:
    # Noise between frames (never an STX, which would legitimately start a frame), split anywhere.
    clean_noise = [n.replace(b"\x02", b"") for n in noise]
    stream = b""
    for i, frame in enumerate(frames(safe, bodies)):
        stream += (clean_noise[i] if i < len(clean_noise) else b"") + frame
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser, out = FrameParser(safe=safe), []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += parser.feed(stream[start:end])
    assert [item for item in out if not isinstance(item, Garbage)] == bodies


@settings(max_examples=300, deadline=None)
@given(safe=st.booleans(), junk=st.binary(max_size=400))
def test_any_bytes_are_frames_or_garbage_never_an_exception(safe: bool, junk: bytes) -> None:
    parser = FrameParser(safe=safe)
    for item in parser.feed(junk):
        assert isinstance(item, bytes | Garbage)
    leftover = parser.discard()
    assert leftover is None or isinstance(leftover, Garbage)


def test_a_corrupted_safe_packet_is_a_crc_error_and_the_next_one_is_read() -> None:
    good = encode_safe_packet(b"00I2.500MH")
    bad = bytearray(good)
    bad[5] ^= 0x01
    out = FrameParser(safe=True).feed(bytes(bad) + good)
    assert isinstance(out[0], Garbage) and out[0].reason == "CRC error"
    assert out[1:] == [b"00I2.500MH"]


def test_a_crc_that_contains_stx_or_etx_does_not_confuse_the_parser() -> None:
    # find a body whose CRC bytes include 0x02 or 0x03
    body = next(
        f"00I{n:04d}MH".encode()
        for n in range(10000)
        if {
            crc16_xmodem(f"00I{n:04d}MH".encode()) >> 8,
            crc16_xmodem(f"00I{n:04d}MH".encode()) & 0xFF,
        }
        & {2, 3}
    )
    assert FrameParser(safe=True).feed(encode_safe_packet(body)) == [body]
