"""Stream plumbing: hashing pass-throughs and (de)compression, so every byte is read once.

Compression, checksum and writing happen in one pass over the data; nothing is held in memory
beyond one chunk. `zstandard` is imported where it is used: lifeos_backup.formats.agestream (and
through it the WAL hot path, on a server python3 that may lack zstandard) needs only ReadStream.
"""

from __future__ import annotations

import gzip
import hashlib
import queue
import threading
from types import TracebackType
from typing import BinaryIO

from lifeos_backup.core.errors import ConfigError

EXTENSIONS = {"zstd": ".zst", "gzip": ".gz"}
CHUNK = 1 << 20


class HashingWriter:
    """Counts and SHA-256-hashes every byte written through it to `out`."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class ReadStream:
    """What file-like readers here share, so zstd, gzip and tar readers can pull from them."""

    def read(self, size: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end (so a digest or an authentication tag covers the whole stream)."""
        while self.read(CHUNK):
            pass


class HashingReader(ReadStream):
    """Counts and SHA-256-hashes every byte read through it from `src`."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._src.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def compressor(out: BinaryIO, algorithm: str, level: int, threads: int = -1) -> BinaryIO:
    """A writable stream that compresses into `out`; closing it does not close `out`.

    zstd `threads=-1` (one per core) compresses beside the Python thread that reads the source;
    0 compresses in the calling thread, for callers that already run one stream per core.
    """
    if algorithm == "zstd":
        import zstandard

        ctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        return ctx.stream_writer(out, closefd=False)
    if algorithm == "gzip":
        return gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0)  # type: ignore[return-value]
    raise ConfigError(f"unknown compression {algorithm!r}", hint="use zstd or gzip")


def decompressor(src: BinaryIO, algorithm: str) -> BinaryIO:
    """A readable stream of the decompressed bytes of `src`."""
    if algorithm == "zstd":
        import zstandard

        ctx = zstandard.ZstdDecompressor()
        return ctx.stream_reader(src, read_size=CHUNK, closefd=False)
    if algorithm == "gzip":
        return gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[return-value]
    raise ConfigError(f"unknown compression {algorithm!r}", hint="use zstd or gzip")


class ReadAhead(ReadStream):
    """Reads `src` to its end in a thread, up to `depth` chunks ahead of the caller.

    Why: zstd, gzip, age and SHA-256 release the GIL on large chunks, so decompressing (and
    hashing, decrypting) an archive in this thread runs on the other core while the caller
    parses tar headers and hashes members in Python. Memory stays bounded: at most `depth`
    chunks wait. An error of the thread is raised to the caller at the point the stream reached;
    `close` (or leaving the `with` block) stops the thread and waits for it, also when the caller
    gives up half-way, so nothing reads `src` once this is closed.
    """

    def __init__(self, src: BinaryIO, depth: int = 4, chunk: int = CHUNK) -> None:
        self._src, self._chunk = src, chunk
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._item, self._pos = b"", 0  # the chunk being read, and how far
        self._done = False
        self._thread = threading.Thread(target=self._fill, name="read-ahead", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._src.read(self._chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next(self) -> bool:
        """Take the next chunk; False at the end of the stream."""
        if self._done:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._item, self._pos, self._done = item, 0, not item
        return bool(item)

    def read(self, size: int = -1) -> bytes:
        """Exactly `size` bytes, fewer only at the end (as io.BufferedReader): TarReader reads
        this directly. A whole chunk asked for whole is handed over without a copy."""
        if self._stop.is_set():
            raise ValueError("read of a closed ReadAhead")
        parts: list[bytes] = []
        wanted = size if size >= 0 else -1
        while wanted != 0:
            if self._pos >= len(self._item) and not self._next():
                break
            end = len(self._item) if wanted < 0 else self._pos + wanted
            part = self._item[self._pos : end]  # the chunk itself when all of it is taken
            self._pos += len(part)
            if wanted > 0:
                wanted -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        """Up to `size` bytes of the current chunk (the next one when it is used up): no parts
        are joined, and a whole chunk is handed over without a copy; b"" only at the end."""
        if self._stop.is_set():
            raise ValueError("read of a closed ReadAhead")
        if self._pos >= len(self._item) and not self._next():
            return b""
        end = len(self._item) if size < 0 else self._pos + size
        part = self._item[self._pos : end]
        self._pos += len(part)
        return part

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def sha256_file(path: str, chunk: int = CHUNK) -> tuple[str, int]:
    """SHA-256 and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
