"""Strings from the wire or from other processes' files, made safe to print.

A received string can hold anything its sender chose: an escape sequence that clears the
screen or sets the window title, a newline that fakes a line, a bidi override that shows
text reversed. Every character that is not printable (C0 and C1 controls, DEL, format
characters such as U+202E, line and paragraph separators, unassigned and private code
points) prints as a visible escape, and a backslash as two, so an escape is never
ambiguous: ``\\t \\n \\r``, ``\\xNN`` below U+0080, ``\\uNNNN`` / ``\\UNNNNNNNN`` above,
and ``\\xNN`` from U+0080 up for a byte that is not UTF-8.
"""

from __future__ import annotations

import codecs
import sys

__all__ = ["escape", "utf8_output"]

_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(value: str | bytes) -> str:
    if isinstance(value, bytes):
        # surrogateescape keeps each invalid byte apart (U+DC80..U+DCFF), as one \xNN.
        value = value.decode("utf-8", "surrogateescape")
    if value.isprintable() and "\\" not in value:
        return value  # the usual case
    return "".join(_char(c) for c in value)


def _char(c: str) -> str:
    named = _NAMED.get(c)
    if named is not None:
        return named
    if c.isprintable():
        return c
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # an undecodable byte (a str from UTF-8 has no surrogates)
        return f"\\x{n - 0xDC00:02x}"
    if n < 0x80:
        return f"\\x{n:02x}"
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def utf8_output() -> bool:
    """Whether stdout writes UTF-8. Else (a latin-1 or C locale) JSON goes out as ASCII
    with \\u escapes, the same document, rather than fail on the first non-ASCII URI."""
    try:
        return codecs.lookup(getattr(sys.stdout, "encoding", None) or "ascii").name == "utf-8"
    except LookupError:
        return False
