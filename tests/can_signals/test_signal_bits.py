"""``signal_bits`` against cantools' own decoding, for any signal layout.

The processor skips a frame when the bits of its mapped signals did not change, so the
mask must hold exactly the bits that can change a decoded value: one too few and a
change is missed, one too many and nothing breaks but speed. For random layouts, each
bit of a random payload is flipped and cantools decides whether the value changed.
"""

from __future__ import annotations

import pytest
from cantools.database.can import Message, Signal
from hypothesis import given, settings
from hypothesis import strategies as st

from can_signals.binding import signal_bits


@st.composite
def layouts(draw: st.DrawFn) -> tuple[Message, Signal, bytes]:
    size = draw(st.sampled_from([1, 2, 8, 8, 8, 12, 64]))  # classic and CAN FD lengths
    bits = 8 * size
    length = draw(st.integers(1, min(64, bits)))
    signed = draw(st.booleans())
    if draw(st.booleans()):
        start = draw(st.integers(0, bits - length))
        signal = Signal("S", start, length, "little_endian", is_signed=signed)
    else:
        # Motorola: the start bit is the MSB; count positions MSB-first to stay inside.
        msb_first = draw(st.integers(0, bits - length))
        start = 8 * (msb_first // 8) + 7 - msb_first % 8
        signal = Signal("S", start, length, "big_endian", is_signed=signed)
    message = Message(frame_id=1, name="M", length=size, signals=[signal], strict=True)
    data = draw(st.binary(min_size=size, max_size=size))
    return message, signal, data


def _raw(message: Message, data: bytes) -> object:
    return message.decode_simple(data, decode_choices=False, scaling=False)["S"]


@settings(max_examples=300, deadline=None)
@given(layout=layouts())
def test_the_mask_is_exactly_the_bits_that_change_the_value(
    layout: tuple[Message, Signal, bytes],
) -> None:
    message, signal, data = layout
    payload = int.from_bytes(data, "little")
    before = _raw(message, data)

    changing = {
        bit
        for bit in range(8 * len(data))
        if _raw(message, (payload ^ (1 << bit)).to_bytes(len(data), "little")) != before
    }
    bits = list(signal_bits(signal))

    assert set(bits) == changing
    assert len(bits) == len(set(bits)) == signal.length


@pytest.mark.parametrize(
    ("start", "length", "expected"),
    [
        (7, 8, range(8)),  # a whole byte
        (7, 16, range(16)),  # MSB in byte 0, LSB in byte 1
        (3, 6, [0, 1, 2, 3, 14, 15]),  # 4 bits of byte 0, then the top 2 of byte 1
        (47, 16, range(40, 56)),  # the RAV4's SPEED: bytes 5 and 6
        (0, 1, [0]),
    ],
)
def test_big_endian_examples(start: int, length: int, expected: range | list[int]) -> None:
    signal = Signal("S", start, length, "big_endian")
    Message(frame_id=1, name="M", length=8, signals=[signal], strict=True)  # a valid layout

    assert set(signal_bits(signal)) == set(expected)
