"""The on-demand DTC read over ISO-TP, against the ECU emulator on python-can's virtual bus.

Every test gets its own virtual channel (virtual channels are process-global): the
emulator talks on one Bus instance of it, the reader on another, as two nodes would.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import can
import isotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from can_signals.diag_protocol import (
    ENGINE_ECU,
    ISOTP_PARAMS,
    MAX_PENDING_RESPONSES,
    DiagnosticConfigError,
    DiagnosticError,
    DiagnosticTimeoutError,
    EcuAddress,
    MalformedResponseError,
    NegativeResponseError,
    parse_dtc_response,
)
from can_signals.dtc import dtc_to_text, is_dtc_text
from can_signals.obd import DtcReader, read_stored_dtcs, read_stored_dtcs_sync
from can_signals.simulator.ecu_emulator import EcuEmulator, EmulatorError, StoredDtc

#: Seconds an ECU gets to answer in these tests: long for a virtual bus, short for a suite.
TIMEOUT = 0.25
UDS_ENGINE = EcuAddress(protocol="uds")
TRANSMISSION = EcuAddress(name="transmission", request_id=0x7E1, response_id=0x7E9)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in threading.enumerate() if t not in before]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def channel() -> str:
    return f"test-obd-{uuid.uuid4().hex}"


def _open_bus(channel: str) -> can.BusABC:
    return can.Bus(interface="virtual", channel=channel)


@pytest.fixture
def ecu_bus(channel: str) -> Iterator[can.BusABC]:
    with _open_bus(channel) as bus:
        yield bus


@pytest.fixture
def tester_bus(channel: str) -> Iterator[can.BusABC]:
    with _open_bus(channel) as bus:
        yield bus


@pytest.fixture
def idle_emulator(ecu_bus: can.BusABC) -> EcuEmulator:
    """An emulator never started: for what :meth:`EcuEmulator.answer` alone decides."""
    return EcuEmulator(ecu_bus)


@pytest.fixture
def emulator(ecu_bus: can.BusABC) -> Iterator[EcuEmulator]:
    with EcuEmulator(ecu_bus) as emulator:
        yield emulator


def _read(
    bus: can.BusABC, ecu: EcuAddress = ENGINE_ECU, *, pending_timeout: float = TIMEOUT
) -> tuple[str, ...]:
    """Read one ECU and return its codes, raising its error if it failed."""
    result = read_stored_dtcs_sync(bus, [ecu], ecu_timeout=TIMEOUT, pending_timeout=pending_timeout)
    (only,) = result.ecus
    if only.error is not None:
        raise only.error
    return only.codes


# --- reads against the emulator -------------------------------------------------------


def test_no_stored_dtcs(emulator: EcuEmulator, tester_bus: can.BusABC) -> None:
    result = read_stored_dtcs_sync(tester_bus, ecu_timeout=TIMEOUT)

    assert result.complete
    assert result.codes == ()
    assert result.for_ecu("engine").ok
    assert emulator.requests_received == 1


def test_a_few_dtcs_come_back_sorted_and_deduplicated(
    emulator: EcuEmulator, tester_bus: can.BusABC
) -> None:
    emulator.set_dtcs(["P0420", "U0100", "P0301", "C0035", "B1234", "P0301"])

    assert _read(tester_bus) == ("B1234", "C0035", "P0301", "P0420", "U0100")


def test_the_emulator_answers_from_its_current_dtcs(
    emulator: EcuEmulator, tester_bus: can.BusABC
) -> None:
    emulator.set_dtcs(["P0301"])
    assert _read(tester_bus) == ("P0301",)

    emulator.set_dtcs(["P0171", "P0174"])
    assert _read(tester_bus) == ("P0171", "P0174")


@pytest.mark.parametrize("ecu", [ENGINE_ECU, UDS_ENGINE], ids=["obd", "uds"])
def test_many_dtcs_arrive_as_a_multi_frame_response(
    emulator: EcuEmulator, tester_bus: can.BusABC, ecu: EcuAddress
) -> None:
    # 40 codes are 82 bytes (OBD) or 163 bytes (UDS): far beyond one 8-byte frame.
    codes = [dtc_to_text(0x0100 + 7 * n) for n in range(40)]
    emulator.set_dtcs(reversed(codes))

    assert _read(tester_bus, ecu) == tuple(sorted(codes))


@pytest.mark.parametrize(
    ("mask", "expected"),
    [(0x08, ("B1234", "P0301")), (0x04, ("P0420",)), (0x0C, ("B1234", "P0301", "P0420"))],
)
def test_uds_reports_the_dtcs_matching_the_status_mask(
    emulator: EcuEmulator, tester_bus: can.BusABC, mask: int, expected: tuple[str, ...]
) -> None:
    emulator.set_dtcs(
        [
            StoredDtc("P0301", status=0x09, failure_type=0x11),  # confirmed, failing now
            StoredDtc("P0420", status=0x04),  # pending only
            StoredDtc("B1234", status=0x08, failure_type=0x4B),  # confirmed, historic
        ]
    )

    assert _read(tester_bus, EcuAddress(protocol="uds", status_mask=mask)) == expected


def test_obd_service_03_reports_only_confirmed_dtcs(
    emulator: EcuEmulator, tester_bus: can.BusABC
) -> None:
    emulator.set_dtcs([StoredDtc("P0301"), StoredDtc("P0420", status=0x04)])

    assert _read(tester_bus) == ("P0301",)


def test_29_bit_addressing(ecu_bus: can.BusABC, tester_bus: can.BusABC) -> None:
    body = EcuAddress(
        name="body",
        request_id=0x18DA40F1,
        response_id=0x18DAF140,
        extended_id=True,
        protocol="uds",
        status_mask=0xFF,
    )
    with EcuEmulator(ecu_bus, body, ["B1001", "U0140"]):
        assert _read(tester_bus, body) == ("B1001", "U0140")


def test_one_silent_ecu_does_not_lose_the_others_answer(
    ecu_bus: can.BusABC, tester_bus: can.BusABC
) -> None:
    # Both ECUs on one node share its Notifier, as in the vehicle simulator.
    with (
        can.Notifier(ecu_bus, [], timeout=0.05) as ecu_notifier,
        EcuEmulator(ecu_bus, ENGINE_ECU, ["P0301"], notifier=ecu_notifier),
        EcuEmulator(ecu_bus, TRANSMISSION, ["P0700"], notifier=ecu_notifier, silent=True) as tcu,
    ):
        started = time.monotonic()
        result = read_stored_dtcs_sync(tester_bus, [ENGINE_ECU, TRANSMISSION], ecu_timeout=TIMEOUT)
        elapsed = time.monotonic() - started

    assert result.for_ecu("engine").codes == ("P0301",)
    assert result.codes == ("P0301",)
    assert not result.complete
    (failed,) = result.failed
    assert failed.ecu == TRANSMISSION
    assert isinstance(failed.error, DiagnosticTimeoutError)
    assert "transmission" in str(failed.error)
    assert tcu.requests_received == 1
    # The ECUs are asked in parallel: one timeout, not one per ECU.
    assert elapsed < 2 * TIMEOUT + 0.5


def test_a_negative_response_names_its_code(emulator: EcuEmulator, tester_bus: can.BusABC) -> None:
    emulator.raw_response = bytes([0x7F, 0x03, 0x22])

    with pytest.raises(NegativeResponseError, match="conditionsNotCorrect") as caught:
        _read(tester_bus)

    assert (caught.value.service, caught.value.nrc) == (0x03, 0x22)
    assert caught.value.nrc_name == "conditionsNotCorrect"


@pytest.mark.parametrize("pending", [1, 3])
@pytest.mark.parametrize("ecu", [ENGINE_ECU, UDS_ENGINE], ids=["obd", "uds"])
def test_response_pending_then_the_answer(
    emulator: EcuEmulator, tester_bus: can.BusABC, ecu: EcuAddress, pending: int
) -> None:
    emulator.set_dtcs(["P0301"])
    emulator.pending_responses = pending

    assert _read(tester_bus, ecu, pending_timeout=TIMEOUT) == ("P0301",)


def test_an_ecu_that_stays_pending_times_out(emulator: EcuEmulator, tester_bus: can.BusABC) -> None:
    emulator.pending_responses = MAX_PENDING_RESPONSES + 1

    with pytest.raises(DiagnosticTimeoutError, match="response pending"):
        _read(tester_bus, pending_timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("ecu", "raw", "message"),
    [
        (ENGINE_ECU, "44 00", "0x44"),
        (ENGINE_ECU, "43 01 03", "not a whole number of codes"),
        (ENGINE_ECU, "43 03 03 01 04 20", "truncated"),
        (UDS_ENGINE, "59 02 ff 03 01 00", "4-byte records"),
        (UDS_ENGINE, "7f 03 11", "service 0x03, but 0x19"),
    ],
)
def test_a_malformed_response_is_reported(
    emulator: EcuEmulator, tester_bus: can.BusABC, ecu: EcuAddress, raw: str, message: str
) -> None:
    emulator.raw_response = bytes.fromhex(raw)

    with pytest.raises(MalformedResponseError, match=message):
        _read(tester_bus, ecu)


def test_padding_pairs_are_not_dtcs(emulator: EcuEmulator, tester_bus: can.BusABC) -> None:
    emulator.raw_response = bytes.fromhex("43 02 03 01 00 00 04 20 00 00")

    assert _read(tester_bus) == ("P0301", "P0420")


# --- sharing the bus with the CAN pipeline --------------------------------------------


def test_the_reader_shares_the_pipelines_notifier(
    emulator: EcuEmulator, ecu_bus: can.BusABC, tester_bus: can.BusABC
) -> None:
    emulator.set_dtcs(["P0301"])
    pipeline = can.BufferedReader()
    with can.Notifier(tester_bus, [pipeline], timeout=0.05) as notifier:
        # Without the notifier the reader would need a second one, which python-can refuses.
        with pytest.raises(DiagnosticConfigError, match="notifier="):
            read_stored_dtcs_sync(tester_bus, ecu_timeout=TIMEOUT)

        ecu_bus.send(can.Message(arbitration_id=0x123, data=b"\x01", is_extended_id=False))
        result = read_stored_dtcs_sync(tester_bus, notifier=notifier, ecu_timeout=TIMEOUT)

        assert result.codes == ("P0301",)
        assert notifier.listeners == [pipeline]
        assert not notifier.stopped
        seen = []
        while (msg := pipeline.get_message(timeout=0.5)) is not None:
            seen.append(msg.arbitration_id)
            if msg.arbitration_id == ENGINE_ECU.response_id:
                break
    # The pipeline kept receiving everything: its broadcast frame and the diagnostic traffic.
    assert seen == [0x123, ENGINE_ECU.response_id]


def test_the_reader_stops_the_notifier_it_started(
    emulator: EcuEmulator, tester_bus: can.BusABC
) -> None:
    assert read_stored_dtcs_sync(tester_bus, ecu_timeout=TIMEOUT).complete
    assert can.Notifier.find_instances(tester_bus) == ()


# --- the async API --------------------------------------------------------------------


def test_the_async_read_does_not_block_the_event_loop(
    emulator: EcuEmulator, tester_bus: can.BusABC
) -> None:
    emulator.silent = True

    async def scenario() -> tuple[int, DiagnosticError | None]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        result = await read_stored_dtcs(tester_bus, ecu_timeout=TIMEOUT)
        done.set()
        await ticking
        return ticks, result.ecus[0].error

    ticks, error = asyncio.run(scenario())

    assert isinstance(error, DiagnosticTimeoutError)
    # About 25 ticks fit in the wait; a blocked loop would manage one.
    assert ticks >= 10


def test_the_async_read_returns_codes(emulator: EcuEmulator, tester_bus: can.BusABC) -> None:
    emulator.set_dtcs(["P0301", "P0420"])

    result = asyncio.run(read_stored_dtcs(tester_bus, [UDS_ENGINE], ecu_timeout=TIMEOUT))

    assert result.codes == ("P0301", "P0420")


def test_a_cancelled_async_read_frees_its_threads_promptly(
    emulator: EcuEmulator, tester_bus: can.BusABC
) -> None:
    emulator.silent = True
    reader = DtcReader(tester_bus, ecu_timeout=30.0)

    async def scenario() -> None:
        task = asyncio.create_task(reader.read_async())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(scenario())  # returns once the default executor's threads are done

    assert time.monotonic() - started < 2.0


# --- the emulator on its own ----------------------------------------------------------


def _exchange(bus: can.BusABC, request: bytes) -> bytes | None:
    """Send one raw request as the tester and return the ECU's first answer."""
    stack = isotp.CanStack(bus, address=ENGINE_ECU.isotp_address(), params=dict(ISOTP_PARAMS))
    stack.start()
    try:
        stack.send(request)
        answer = stack.recv(block=True, timeout=TIMEOUT)
    finally:
        stack.stop()
    return None if answer is None else bytes(answer)


@pytest.mark.parametrize(
    ("request_hex", "answer_hex"),
    [
        ("22 f1 90", "7f 22 11"),  # ReadDataByIdentifier: not this ECU's business
        ("19 0a", "7f 19 12"),  # reportSupportedDTC: sub-function not supported
        ("19", "7f 19 13"),
        ("19 02", "7f 19 13"),
        ("03 00", "7f 03 13"),
        ("19 02 08", "59 02 ff 03 01 00 08"),
        ("03", "43 01 03 01"),
    ],
)
def test_the_emulator_answers_like_an_ecu(
    idle_emulator: EcuEmulator, request_hex: str, answer_hex: str
) -> None:
    idle_emulator.set_dtcs(["P0301"])

    assert idle_emulator.answer(bytes.fromhex(request_hex)) == (bytes.fromhex(answer_hex),)


def test_the_emulator_sends_response_pending_first(idle_emulator: EcuEmulator) -> None:
    idle_emulator.pending_responses = 2

    assert idle_emulator.answer(b"\x03") == (b"\x7f\x03\x78", b"\x7f\x03\x78", b"\x43\x00")


def test_the_emulator_refuses_other_services_on_the_bus(
    emulator: EcuEmulator, tester_bus: can.BusABC
) -> None:
    assert _exchange(tester_bus, bytes.fromhex("22 f1 90")) == bytes.fromhex("7f 22 11")
    assert _exchange(tester_bus, bytes.fromhex("19 0a")) == bytes.fromhex("7f 19 12")


def test_a_silent_emulator_says_nothing(emulator: EcuEmulator, tester_bus: can.BusABC) -> None:
    emulator.silent = True

    assert _exchange(tester_bus, b"\x03") is None
    assert emulator.requests_received == 1


def test_the_emulator_starts_once_and_stops_cleanly(ecu_bus: can.BusABC) -> None:
    emulator = EcuEmulator(ecu_bus)
    emulator.stop()  # not started: nothing to do
    with emulator, pytest.raises(EmulatorError, match="already running"):
        emulator.start()
    emulator.stop()
    with emulator:  # and it can be started again
        pass


@pytest.mark.parametrize(
    "settings",
    [
        {"availability_mask": 0x100},
        {"pending_responses": -1},
        {"dtcs": [StoredDtc("P0301")] * 256},
    ],
)
def test_the_emulator_rejects_impossible_settings(
    ecu_bus: can.BusABC, settings: dict[str, object]
) -> None:
    with pytest.raises(EmulatorError):
        EcuEmulator(ecu_bus, **settings)  # type: ignore[arg-type]


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"name": ""},
        {"request_id": 0x800},
        {"response_id": -1},
        {"request_id": 0x7E8},
        {"request_id": 0x2000_0000, "extended_id": True},
        {"protocol": "kwp"},
        {"status_mask": 0},
        {"status_mask": 0x100},
    ],
)
def test_an_impossible_ecu_address_is_refused(settings: dict[str, object]) -> None:
    with pytest.raises(DiagnosticConfigError):
        EcuAddress(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ecus", "ecu_timeout", "pending_timeout"),
    [
        ([], 1.0, 1.0),
        ([ENGINE_ECU, EcuAddress(request_id=0x7E1, response_id=0x7E9)], 1.0, 1.0),
        ([ENGINE_ECU, EcuAddress(name="again", request_id=0x7E1)], 1.0, 1.0),
        ([ENGINE_ECU], 0.0, 1.0),
        ([ENGINE_ECU], 1.0, -1.0),
    ],
    ids=["no-ecu", "same-name", "same-response-id", "zero-timeout", "negative-pending"],
)
def test_an_impossible_reader_is_refused(
    tester_bus: can.BusABC, ecus: list[EcuAddress], ecu_timeout: float, pending_timeout: float
) -> None:
    with pytest.raises(DiagnosticConfigError):
        DtcReader(tester_bus, ecus, ecu_timeout=ecu_timeout, pending_timeout=pending_timeout)


# --- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ecu", "raw", "message"),
    [
        (ENGINE_ECU, "", "empty"),
        (ENGINE_ECU, "43", "count byte"),
        (ENGINE_ECU, "43 01 03 01 04 20", "announces 1 DTCs but carries 2"),
        (ENGINE_ECU, "43 02 03 01 00 00", "announces 2 DTCs but carries 1"),
        (ENGINE_ECU, "7f 03", "3 bytes"),
        (ENGINE_ECU, "7f 03 11 00", "3 bytes"),
        (ENGINE_ECU, "59 02 ff", "0x59"),
        (UDS_ENGINE, "59", "availability mask"),
        (UDS_ENGINE, "59 04 ff", "sub-function 0x04"),
        (UDS_ENGINE, "59 02 ff 03 01 00", "4-byte records"),
        (UDS_ENGINE, "43 00", "0x43"),
    ],
)
def test_parsing_rejects_malformed_responses(ecu: EcuAddress, raw: str, message: str) -> None:
    with pytest.raises(MalformedResponseError, match=message):
        parse_dtc_response(bytes.fromhex(raw), ecu)


def test_parsing_drops_uds_records_outside_the_mask_and_zero_codes() -> None:
    # An ECU that ignores the requested mask (0x08) and pads with a zero record.
    raw = bytes.fromhex("59 02 ff  03 01 11 09  04 20 00 04  00 00 00 08  03 01 1f 08")

    assert parse_dtc_response(raw, UDS_ENGINE) == ("P0301",)


def test_response_pending_is_a_negative_response_to_the_parser() -> None:
    with pytest.raises(NegativeResponseError, match="ResponsePending"):
        parse_dtc_response(bytes.fromhex("7f 19 78"), UDS_ENGINE)


@given(
    payload=st.binary(max_size=64),
    protocol=st.sampled_from(["obd", "uds"]),
    mask=st.integers(min_value=1, max_value=0xFF),
)
def test_parsing_any_bytes_returns_codes_or_raises_a_diagnostic_error(
    payload: bytes, protocol: str, mask: int
) -> None:
    ecu = EcuAddress(protocol=protocol, status_mask=mask)  # type: ignore[arg-type]
    try:
        codes = parse_dtc_response(payload, ecu)
    except DiagnosticError:
        return
    assert all(is_dtc_text(code) for code in codes)
    assert list(codes) == sorted(set(codes))
    assert "P0000" not in codes


@given(
    dtcs=st.lists(
        st.builds(
            StoredDtc,
            code=st.integers(min_value=1, max_value=0xFFFF).map(dtc_to_text),
            status=st.integers(min_value=0, max_value=0xFF),
            failure_type=st.integers(min_value=0, max_value=0xFF),
        ),
        max_size=40,
    ),
    mask=st.integers(min_value=1, max_value=0xFF),
)
def test_parsing_reads_back_what_the_emulator_answers(dtcs: list[StoredDtc], mask: int) -> None:
    with _open_bus(f"test-obd-{uuid.uuid4().hex}") as bus:
        emulator = EcuEmulator(bus, dtcs=dtcs)  # never started: answer() alone
        for ecu, wanted in (
            (ENGINE_ECU, 0x08),
            (EcuAddress(protocol="uds", status_mask=mask), mask),
        ):
            (answer,) = emulator.answer(ecu.request())
            expected = tuple(sorted({d.code for d in dtcs if d.status & wanted}))
            assert parse_dtc_response(answer, ecu) == expected
