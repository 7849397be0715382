"""Caps on what a hostile data file can make a loader allocate, and bounded readers.

A file may claim anything in its header (an IDX size, a tar member size, a gzip stream
that inflates a thousandfold); loaders check such claims against these caps *before*
allocating, and read every stream with a bound, so memory stays in proportion to what a
file really holds and never exceeds the caps. The caps are environment variables, in MiB:

* ``POISONLAB_MAX_FILE_MB`` (default 256): the largest single file or archive member a
  loader reads whole, counted after decompression (official files: MNIST's training
  images are 45 MiB inflated, a CIFAR-10 batch 30 MiB, others far smaller). An archive
  itself is streamed and may be bigger.
* ``POISONLAB_MAX_ARCHIVE_MB`` (default 2048): everything inflated from one archive,
  headers and skipped members included (the official GTSRB, IMDB and CIFAR-10 archives
  inflate to under 600 MiB).
* ``POISONLAB_MAX_ARCHIVE_MEMBERS`` (default 1,000,000): entries in one archive (the
  official IMDB archive has about 100,000).

Images have pixel caps per use (GTSRB signs, trigger images), in :mod:`.images`.
"""
from __future__ import annotations

import os
from typing import BinaryIO, Callable, Protocol

from ..errors import PoisonlabError, shown

MIB = 1 << 20
CHUNK = 1 << 20
DEFAULTS: dict[str, int] = {
    "POISONLAB_MAX_FILE_MB": 256,
    "POISONLAB_MAX_ARCHIVE_MB": 2048,
    "POISONLAB_MAX_ARCHIVE_MEMBERS": 1_000_000,
}
_UPPER = 1 << 40  # no cap may be set above this (a typo with extra digits)


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return DEFAULTS[name]
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if not 1 <= value <= _UPPER:
        raise PoisonlabError(f"${name} must be a whole number from 1 to {_UPPER}, got {shown(raw)}; "
                             f"unset it for the default {DEFAULTS[name]}")
    return value


def max_file_bytes() -> int:
    """``$POISONLAB_MAX_FILE_MB`` in bytes: the most one file or member may hold, decompressed."""
    return _env_int("POISONLAB_MAX_FILE_MB") * MIB


def max_archive_bytes() -> int:
    """``$POISONLAB_MAX_ARCHIVE_MB`` in bytes: the most one archive may inflate to."""
    return _env_int("POISONLAB_MAX_ARCHIVE_MB") * MIB


def max_archive_members() -> int:
    """``$POISONLAB_MAX_ARCHIVE_MEMBERS``: the most entries one archive may have."""
    return _env_int("POISONLAB_MAX_ARCHIVE_MEMBERS")


def mib(n: int) -> str:
    """``n`` bytes as a short MiB figure for messages (``"3072 MiB"``)."""
    return f"{n / MIB:.0f} MiB" if n >= MIB else f"{n} bytes"


def over_file_cap(label: str, size: int, what: str = "is") -> PoisonlabError:
    """The one-line error for something bigger than ``$POISONLAB_MAX_FILE_MB``."""
    cap = max_file_bytes()
    return PoisonlabError(
        f"{label}: {what} {mib(size)}, over the {mib(cap)} size cap; not a genuine data file "
        "(raise $POISONLAB_MAX_FILE_MB if it really is)"
    )


def check_file_size(label: str, size: int, what: str = "is") -> None:
    """Raise :func:`over_file_cap` when ``size`` bytes exceed ``$POISONLAB_MAX_FILE_MB``."""
    if size > max_file_bytes():
        raise over_file_cap(label, size, what)


class _Readable(Protocol):
    def readinto(self, b: memoryview) -> int | None: ...


def read_exactly(stream: _Readable, n: int, label: str, what: str = "data",
                 short: Callable[[int], PoisonlabError] | None = None) -> bytearray:
    """Exactly ``n`` bytes from ``stream``, read in 1 MiB steps; a one-line error when it ends early
    (``short(bytes got)`` makes that error, if given).

    Memory grows with the bytes that really arrive, not with ``n`` (a header can lie).
    """
    out = bytearray()
    step = memoryview(bytearray(min(max(n, 1), CHUNK)))
    while len(out) < n:
        got = stream.readinto(step[: min(len(step), n - len(out))])
        if not got:
            if short is not None:
                raise short(len(out))
            raise PoisonlabError(f"{label}: truncated {what}, expected {n} bytes but it ends after {len(out)}; "
                                 "the file is corrupt, fetch it again")
        out += step[:got]
    return out


def at_end(stream: BinaryIO) -> bool:
    """Whether ``stream`` has nothing more to give (reads at most one byte)."""
    return stream.read(1) == b""


class BudgetReader:
    """A read-only stream over ``inner`` that raises once more than ``budget`` bytes came out.

    Wrapped around a decompressor, it bounds what one archive can inflate to, whatever its
    headers say (tar PAX headers, skipped members and all).
    """

    def __init__(self, inner: BinaryIO, budget: int, label: str) -> None:
        self.inner, self.budget, self.label, self.count = inner, budget, label, 0

    def _charge(self, n: int) -> None:
        self.count += n
        if self.count > self.budget:
            raise PoisonlabError(
                f"{self.label}: inflates to more than {mib(self.budget)}, the archive size cap; "
                "it is corrupt or a decompression bomb (raise $POISONLAB_MAX_ARCHIVE_MB if it is genuine)"
            )

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.budget - self.count + 1  # never an unbounded read
        data = self.inner.read(min(n, CHUNK * 16))
        self._charge(len(data))
        return data

    def readinto(self, b: memoryview) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.count

    def close(self) -> None:
        self.inner.close()
