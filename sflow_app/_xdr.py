"""XDR primitives: struct packers, clamping, UTF-8-safe cutting and a bounds-checked reader."""

from __future__ import annotations

import re
import socket
import struct

U32 = struct.Struct(">I")
TAG_LEN = struct.Struct(">II")  # data_format + length of every sample and record
pack_u32 = U32.pack

MAX_U32 = 0xFFFFFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF
PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by len & 3
_LIMIT = {"I": MAX_U32, "Q": MAX_U64}


def pad4(n: int) -> int:
    """``n`` rounded up to a multiple of 4."""
    return (n + 3) & ~3


def split_layout(layout: str) -> tuple[str, str, str]:
    """A record ``LAYOUT`` as (leading numbers, strings or addresses, trailing numbers).

    Every record in this package has that shape, which keeps encoder and decoder flat.
    """
    shape = re.fullmatch(r"([IQ]*)(s*|4*|6*)([IQ]*)", layout)
    if shape is None:
        raise TypeError(f"record layout {layout!r} is not numbers, strings/addresses, numbers")
    head, mid, tail = shape.groups()
    return head, mid, tail


def clamp(value: object, limit: int) -> int:
    """``value`` as an int in ``[0, limit]``; anything that is not a number becomes 0."""
    try:
        v = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0
    return 0 if v < 0 else min(v, limit)


def clamp_all(values: tuple[object, ...], fmt: str) -> tuple[int, ...]:
    """Clamp each value to the range of its struct code (``I`` or ``Q``) in ``fmt``."""
    return tuple(clamp(v, _LIMIT[c]) for v, c in zip(values, fmt, strict=True))


def to_bytes(s: object) -> bytes:
    """A string field's wire bytes: ``str`` as UTF-8, bytes-likes as is, anything else empty."""
    if isinstance(s, str):
        try:
            return s.encode()
        except UnicodeEncodeError:
            return _encode_surrogates(s)
    if isinstance(s, bytes | bytearray | memoryview):
        return bytes(s)
    return b""


def _encode_surrogates(s: str) -> bytes:
    # surrogateescape'd bytes (os.fsdecode, some servers) go back to the original bytes;
    # any other lone surrogate cannot be encoded and is replaced.
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace")


def cut_utf8(b: str | bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``b``, never ending inside a UTF-8 character.

    ``str`` is encoded first. Bytes that are not UTF-8 where the cut falls are cut plainly.
    """
    b = to_bytes(b)
    if len(b) <= limit:
        return b
    if limit <= 0:
        return b""
    # Only the character at the cut matters: invalid bytes elsewhere (a surrogate-escaped
    # byte at the end of a long URI) must not let the cut split it.
    i = limit
    while i > 0 and i > limit - 3 and (b[i] & 0xC0) == 0x80:  # b[i] continues a character
        i -= 1
    lead = b[i]
    if i < limit and lead >= 0xC0:
        n = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if i + n > limit:  # the character at i crosses the cut
            try:
                b[i : i + n].decode()
            except UnicodeDecodeError:
                pass  # not a character: cut plainly
            else:
                return b[:i]
    return b[:limit]


def pack_ip(ip: object, family: int) -> bytes:
    """Raw address bytes for ``ip`` (text or already packed); zeros if it does not parse."""
    try:
        return socket.inet_pton(family, ip)  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError):
        pass
    if isinstance(ip, str) and "%" in ip:  # IPv6 zone: "fe80::1%eth0"
        return pack_ip(ip.split("%", 1)[0], family)
    size = 4 if family == socket.AF_INET else 16
    return ip if isinstance(ip, bytes) and len(ip) == size else b"\0" * size


class DecodeError(ValueError):
    """The datagram is malformed; the message says what and where."""

    __module__ = "sflow_app.decode"


class Reader:
    """Bounds-checked cursor over a datagram. ``end`` is the current limit (sample end)."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def need(self, n: int) -> int:
        """Reserve ``n`` bytes and return their offset."""
        pos = self.pos
        if n > self.end - pos:
            raise DecodeError(f"truncated: need {n} bytes at offset {pos}, have {self.end - pos}")
        self.pos = pos + n
        return pos

    def unpack(self, st: struct.Struct) -> tuple[int, ...]:
        return st.unpack_from(self.data, self.need(st.size))

    def u32(self) -> int:
        return U32.unpack_from(self.data, self.need(4))[0]  # type: ignore[no-any-return]

    def take(self, n: int) -> bytes:
        pos = self.need(n)
        return self.data[pos : pos + n]

    def string(self) -> str | bytes:
        """An XDR string: ``str`` when the bytes are valid UTF-8, else ``bytes``."""
        n = self.u32()
        pos = self.need(pad4(n))
        raw = self.data[pos : pos + n]
        if self.data[pos + n : pos + pad4(n)] != PAD[n & 3]:  # XDR pads with zeros
            raise DecodeError(f"string padding at offset {pos + n} is not zero")
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw

    def ip(self, family: int) -> str:
        return socket.inet_ntop(family, self.take(4 if family == socket.AF_INET else 16))
