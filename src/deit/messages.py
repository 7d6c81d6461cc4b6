"""Errors and names as one printable line: what every message to a user is made of."""

from __future__ import annotations

import re


def printable(text: str) -> str:
    """`text` with control characters (terminal escape codes, newlines) written as escapes: printed as it is, a
    hostile class name or file name could move the cursor, recolour the terminal or forge a second line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def first_line(error: BaseException) -> str:
    """An exception as one line: its type and its message's first sentence (libraries write paragraphs)."""
    text = str(error).strip().split("\n")[0].split(". ")[0][:160]
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "its bytes", text)  # Pillow's name for a file in memory
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
