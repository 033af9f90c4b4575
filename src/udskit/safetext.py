"""Pure: the one escaping rule for anything a peer controls, before a person sees it.

A process name (`/proc/PID/comm`, which any process sets with prctl(PR_SET_NAME)), an
argv, a socket path or an abstract name may hold any byte but NUL: a newline that
forges a line of output, ESC sequences that repaint a root terminal, bytes that are
not UTF-8. Every human output of udskit (the `ls` table, dump lines and status lines,
`relay -v`, `listen -v`, error messages) passes such text through `escape_text` or
`escape_bytes`, and the command line's writers pass every line through `safe_line` as
a last guard.

The notation is the one abstract addresses use (see `udskit.address`): a printable
character stands for itself, a backslash is written `\\\\`, and every other byte, be it
a control character (C0, DEL, C1), a Unicode format or separator character (bidi
overrides, U+2028) or a byte that is not UTF-8, is written `\\xHH`, one escape per
byte of its UTF-8 (or raw) encoding. So the text is one line, shows no invisible
character, and `unescape` gives the exact bytes back.
"""

from __future__ import annotations

#: Imported by every command before `udskit ls` forks its scan: no typing import here.
__all__ = ["escape_bytes", "escape_text", "is_plain", "json_fields", "safe_line", "unescape"]

_HEX = "0123456789abcdefABCDEF"


def is_plain(text: str) -> bool:
    """Would `escape_text` leave `text` as it is? (printable, no backslash, no
    surrogate-escaped byte: lone surrogates are not printable)."""
    return text.isprintable() and "\\" not in text


def escape_text(text: str) -> str:
    """`text` (possibly holding bytes smuggled by surrogateescape) as one safe line."""
    if is_plain(text):  # the usual case costs one scan
        return text
    return escape_bytes(text.encode("utf-8", errors="surrogateescape"))


def escape_bytes(raw: bytes) -> str:
    """Printable characters as they are; `\\` doubled; any other byte as `\\xHH`."""
    out: list[str] = []
    for ch in raw.decode("utf-8", errors="surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, smuggled by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def unescape(text: str) -> bytes:
    """The bytes `escape_bytes` wrote. Raises ValueError on a lone or unknown escape."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("utf-8", errors="surrogateescape")
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        pair = text[i + 2 : i + 4]
        if nxt == "\\":
            out.append(0x5C)
            i += 2
        elif nxt == "x" and len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
            out.append(int(pair, 16))
            i += 4
        elif nxt == "0":
            out.append(0)
            i += 2
        else:
            raise ValueError(
                f"bad escape in {text!r} at position {i}: write \\xHH for a byte, "
                "\\\\ for a backslash"
            )
    return bytes(out)


def json_fields(key: str, text: str | None) -> dict[str, str | None]:
    """`{key: text}` for a JSON object, strict UTF-8 always: text holding bytes that
    are not UTF-8 (surrogate-escaped) is written escaped, and its exact bytes go in
    `KEY_b64` (a lone surrogate escape is not text every strict parser takes)."""
    if text is None or text.isascii():
        return {key: text}
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        import base64

        raw = text.encode("utf-8", errors="surrogateescape")
        return {key: escape_text(text), f"{key}_b64": base64.b64encode(raw).decode("ascii")}
    return {key: text}


def safe_line(line: str) -> str:
    """The last guard on a line about to be written: any character that is not
    printable (but a tab, which -X rows use) becomes `\\xHH`. Text that went through
    `escape_text` passes unchanged; this only catches what a printer forgot, so
    backslashes are left alone here."""
    if line.isprintable():
        return line
    out: list[str] = []
    for ch in line:
        if ch.isprintable() or ch == "\t":
            out.append(ch)
            continue
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", errors="surrogatepass"))
    return "".join(out)
