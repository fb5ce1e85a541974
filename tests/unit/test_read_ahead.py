"""ReadAhead (lifeos_backup.formats.streams): its source's bytes in exact reads, its source's
errors where the stream reached them, bounded memory, and no thread left reading once closed."""

from __future__ import annotations

import io
import threading
import time
import zlib

import pytest

from lifeos_backup.formats.streams import ReadAhead


class Counting(io.BytesIO):
    """A source that counts its reads and can be made to fail after `fail_after` bytes."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.reads = 0
        self.fail_after = fail_after
        self.gate = threading.Event()
        self.gate.set()

    def read(self, size: int | None = -1) -> bytes:
        self.gate.wait()
        self.reads += 1
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise zlib.error("Error -3 while decompressing data: invalid stored block lengths")
        return super().read(size)


DATA = bytes(range(256)) * 4099  # about 1 MB, not a multiple of the chunk


@pytest.mark.parametrize("size", [1, 511, 512, 4096, 10_000, 65536, -1])
def test_it_gives_the_sources_bytes_in_any_read_size(size: int) -> None:
    with ReadAhead(Counting(DATA), depth=2, chunk=10_000) as stream:
        parts = []
        while part := stream.read(size):
            assert size < 0 or len(part) == size or len(b"".join(parts)) + len(part) == len(DATA)
            parts.append(part)  # exactly `size` bytes, fewer only at the end
            if size < 0:
                break
        assert b"".join(parts) == DATA
        assert stream.read(100) == b""  # and stays at the end


def test_a_source_error_is_raised_where_the_stream_reached_it() -> None:
    source = Counting(DATA, fail_after=30_000)
    with ReadAhead(source, depth=2, chunk=10_000) as stream:
        got = b""
        with pytest.raises(zlib.error, match="invalid stored block"):
            while part := stream.read(4096):
                got += part
        # Every read before the failing one had its bytes, in order; the failing read (which
        # spans the error) raises instead of returning a part, as io.BufferedReader does.
        assert DATA[:30_000].startswith(got) and len(got) > 30_000 - 4096


def test_it_reads_at_most_depth_chunks_ahead_and_stops_when_closed() -> None:
    source = Counting(DATA)
    stream = ReadAhead(source, depth=2, chunk=1000)
    assert stream.read(10) == DATA[:10]
    time.sleep(0.5)  # time for the thread to run far ahead, were it unbounded
    assert source.reads <= 2 + 2  # the chunk held, `depth` waiting, one blocked on a full queue
    stream.close()
    threads = [t for t in threading.enumerate() if t.name == "read-ahead"]
    assert threads == []
    assert stream.closed
    with pytest.raises(ValueError):
        stream.read(1)


def test_closing_while_the_source_is_slow_waits_for_the_thread() -> None:
    source = Counting(DATA)
    source.gate.clear()  # the source's read blocks until the gate opens
    stream = ReadAhead(source, depth=1, chunk=1000)
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close waits: the thread is inside the source's read
    source.gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [t for t in threading.enumerate() if t.name == "read-ahead"] == []
