"""The reporting virtqueue's frames on a local socket (``--queue-socket``).

On one machine the guest may carry its Reporting stream over a Unix stream
socket the host listens on, beside gRPC (which keeps the negotiation, stats and
close calls): no HTTP/2 and none of gRPC's threads on a chain's path. The
messages are the gRPC stream's own protobufs; only the framing is ours: a
4-byte little-endian length, then one kind byte and the payload (the length
counts both). The guest's first frame is HELLO with its session token; the
host answers READY when the token names a session of its own (so a wrong
socket is told from a slow host), and the guest sends MESSAGE frames (a
``GuestMessage`` each). The host answers USED frames (a
``Used`` each) and, when it ends the stream with a status, one END frame: the
status's name and its one line, as gRPC's ``why`` gives them ("ABORTED: ...").
"""

from __future__ import annotations

import asyncio
import struct

HELLO = 1  # guest → host, first: the session token (ASCII)
MESSAGE = 2  # guest → host: a GuestMessage
USED = 3  # host → guest: a Used
END = 4  # host → guest, last: "STATUS: one line"
READY = 5  # host → guest, first: the hello named a live session; answers follow
KINDS = frozenset({HELLO, MESSAGE, USED, END, READY})

_HEADER = struct.Struct("<IB")
_LENGTH = struct.Struct("<I")

# The sun_path of a Unix socket address holds 108 bytes with the closing NUL
# (struct sockaddr_un, include/uapi/linux/un.h: UNIX_PATH_MAX 108).
MAX_SOCKET_PATH = 107


class FrameError(Exception):
    """The peer broke the framing (the message says how); the stream cannot go on."""


class FrameCut(FrameError):
    """The peer closed the socket inside a frame: it went away (killed, say), not
    a frame of the wrong shape."""


def frame(kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload) + 1, kind) + payload


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> tuple[int, bytes] | None:
    """The next (kind, payload); None at a clean end (the peer closed between
    frames). FrameError for a frame too big or of no kind we know, FrameCut for
    one cut short; OSError as the socket raises it."""
    try:
        head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise FrameCut("the peer closed the socket inside a frame") from None
    (length,) = _LENGTH.unpack(head)
    if not 1 <= length <= max_bytes + 1:
        raise FrameError(f"a frame of {length:,} bytes (at most {max_bytes + 1:,})")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameCut("the peer closed the socket inside a frame") from None
    kind = body[0]
    if kind not in KINDS:
        raise FrameError(f"a frame of unknown kind {kind}")
    return kind, body[1:]


def socket_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a Unix socket (None when it can)."""
    if not path.strip() or "\0" in path:
        return "give a path"
    if len(path.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH:
        return f"longer than a Unix socket's path may be ({MAX_SOCKET_PATH} bytes)"
    return None
