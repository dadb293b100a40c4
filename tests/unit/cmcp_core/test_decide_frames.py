"""The hop's framing: frames survive any split of the byte stream, and an oversized length prefix
is refused on the prefix alone (the body is never awaited or buffered)."""

from __future__ import annotations

import pytest

from cmcp_core.decide_frames import HEADER, MAX_REQUEST_FRAME, FramedProtocol, Kind, frame, json_payload
from cmcp_core.errors import CmcpError, Code


class Recorder(FramedProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[int, bytes]] = []
        self.too_large: list[int] = []

    def frame_received(self, kind: int, payload: bytes) -> None:
        self.frames.append((kind, payload))

    def frame_too_large(self, length: int) -> None:
        self.too_large.append(length)
        self.closed = True


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 1000])
def test_frames_come_out_whole_however_the_bytes_arrive(chunk: int) -> None:
    sent = [(Kind.DECIDE, b"a" * 300), (Kind.PING, b""), (Kind.REPLY, b"\0" * 17)]
    stream = b"".join(frame(kind, payload) for kind, payload in sent)
    recorder = Recorder()
    for start in range(0, len(stream), chunk):
        recorder.data_received(stream[start:start + chunk])
    assert recorder.frames == [(int(k), p) for k, p in sent]
    assert not recorder._buffer


def test_an_oversized_prefix_is_refused_before_its_body() -> None:
    recorder = Recorder()
    recorder.data_received(frame(Kind.PING) + HEADER.pack(MAX_REQUEST_FRAME + 1, Kind.DECIDE))
    assert recorder.frames == [(Kind.PING, b"")]
    assert recorder.too_large == [MAX_REQUEST_FRAME + 1]
    recorder.data_received(b"x" * 100)  # closed: nothing more is parsed
    assert recorder.frames == [(Kind.PING, b"")]


def test_a_handshake_frame_that_is_not_a_json_object_is_coded() -> None:
    for payload in (b"not json", b"[1]"):
        with pytest.raises(CmcpError) as bad:
            json_payload(payload)
        assert bad.value.code is Code.DECIDE_FRAME_INVALID
