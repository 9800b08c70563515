"""The Weir redaction rules in Python: the "portable" rule set of the first-party Rust
plugin (`builtin:pii-redact` with `{"kinds":["email","card","ssn"]}`), built into a
Wasm component of the `weir:plugin/transform` world by componentize-py. See ../README.md.

Every string value of a record (not the keys) is searched for e-mail addresses, payment
cards (13-19 digits, spaces or dashes allowed, Luhn-checked) and US social security
numbers; each match becomes `[REDACTED:KIND]`. Everything else is copied byte for byte.
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import PluginError_Failed, PluginError_InvalidConfig

# `\b`: a change between word characters and the rest. The Rust regex crate uses
# Unicode's word characters; like the C and JS ports, this one approximates them with
# ASCII letters, digits and '_' plus the letters of the common scripts (Latin, Greek,
# Cyrillic, kana, CJK, Hangul), so that the three ports agree everywhere.
W = (
    "[0-9A-Za-z_\u00aa\u00b5\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02ff\u0370-\u037d"
    "\u037f-\u0386\u0388-\u052f\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7a3]"
)
B = f"(?:(?<={W})(?!{W})|(?<!{W})(?={W}))"
LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# The same patterns as the Rust detector, tried in the same priority order.
DETECT = re.compile(
    f"(?P<email>{B}[A-Za-z0-9._%+-]+@{LABEL}(?:\\.{LABEL})*\\.[A-Za-z]{{2,}}{B})"
    f"|(?P<card>{B}[0-9](?:[ -]?[0-9]){{12,18}}{B})"
    f"|(?P<ssn>{B}[0-9]{{3}}-[0-9]{{2}}-[0-9]{{4}}{B})"
)
STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def luhn(text):
    digits = [int(c) for c in text if "0" <= c <= "9"]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return len(digits) > 0 and total % 10 == 0


def card_ok(text):
    n = sum(1 for c in text if "0" <= c <= "9")
    return 13 <= n <= 19 and luhn(text)


def ssn_ok(text):
    d = [int(c) for c in text if "0" <= c <= "9"]
    area = d[0] * 100 + d[1] * 10 + d[2]
    group = d[3] * 10 + d[4]
    serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8]
    return area != 0 and area != 666 and area < 900 and group != 0 and serial != 0


def valid_length(kind, text):
    """The length of the longest valid match at the start of `text`, or None."""
    if kind == "email":
        return len(text)
    if kind == "ssn":
        return len(text) if ssn_ok(text) else None
    if card_ok(text):
        return len(text)
    for i in range(len(text) - 1, 0, -1):
        if text[i] in " -" and card_ok(text[:i]):
            return i
    return None


def redact(s):
    """`s` with every detected span masked, or None when it holds none."""
    out = []
    copied = pos = 0
    while pos < len(s):
        m = DETECT.search(s, pos)
        if m is None:
            break
        kind = m.lastgroup
        n = valid_length(kind, m.group())
        if n is None:
            pos = m.start() + 1
            continue
        out.append(s[copied : m.start()])
        out.append("[REDACTED:" + kind + "]")
        copied = pos = m.start() + n
    if not out:
        return None
    out.append(s[copied:])
    return "".join(out)


def redact_line(line):
    out = bytearray()
    copied = 0
    for m in STRING.finditer(line):
        rest = line[m.end() :].lstrip(b" \t\r\n")
        if rest[:1] == b":":
            continue  # a key
        token = m.group()
        text = json.loads(token) if b"\\" in token else token[1:-1].decode("utf-8")
        red = redact(text)
        if red is not None:
            out += line[copied : m.start()]
            out += json.dumps(red, ensure_ascii=False).encode("utf-8")
            copied = m.end()
    out += line[copied:]
    return out


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        try:
            parsed = json.loads(config)
        except ValueError as e:
            raise Err(PluginError_InvalidConfig(f"config is not JSON: {e}"))
        if parsed != {}:
            raise Err(PluginError_InvalidConfig("this redactor takes no options: config must be {}"))

    def process(self, batch: bytes) -> bytes:
        out = bytearray()
        for number, line in enumerate(batch.split(b"\n"), 1):
            if not line:
                continue
            if line[:1] != b"{":
                raise Err(PluginError_Failed(f"line {number}: record is not a JSON object"))
            out += redact_line(line)
            out += b"\n"
        return bytes(out)
