"""Task ids and delivery tags: random UUID4 strings, as Celery and kombu make them."""

from __future__ import annotations

import os


def uuid() -> str:
    """A new task id: a random UUID4 string, as Celery makes them."""
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` random UUID4 strings, from one read of the OS's randomness.

    ``str(uuid.uuid4())`` costs a system call and a UUID object per id, which a batch of
    tens of thousands feels; the text is the same (version 4, RFC 4122 variant).
    """
    raw = os.urandom(16 * count).hex()
    ids = []
    for at in range(0, 32 * count, 32):
        h = raw[at : at + 32]
        variant = _VARIANT[h[16]]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    return ids


# The RFC 4122 variant keeps a hex digit's two low bits: 8, 9, a or b.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
