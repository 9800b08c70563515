// The Weir redaction rules in JavaScript: the "portable" rule set of the first-party
// Rust plugin (`builtin:pii-redact` with `{"kinds":["email","card","ssn"]}`), built into
// a Wasm component of the `weir:plugin/transform` world by componentize-js. See
// ../README.md.
//
// Every string value of a record (not the keys) is searched for e-mail addresses,
// payment cards (13-19 digits, spaces or dashes allowed, Luhn-checked) and US social
// security numbers; each match becomes `[REDACTED:KIND]`. Everything else is copied
// byte for byte.

// `\b`: a change between word characters and the rest. The Rust regex crate uses
// Unicode's word characters; the engine inside componentize-js has no Unicode property
// classes, so this port (like the C one) approximates them with ASCII letters, digits
// and '_' plus the letters of the common scripts (Latin, Greek, Cyrillic, kana, CJK,
// Hangul).
const W = String.raw`[0-9A-Za-z_\u00aa\u00b5\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02ff\u0370-\u037d\u037f-\u0386\u0388-\u052f\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7a3]`;
const B = String.raw`(?:(?<=${W})(?!${W})|(?<!${W})(?=${W}))`;
const LABEL = String.raw`[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?`;
const EMAIL = String.raw`${B}[A-Za-z0-9._%+-]+@${LABEL}(?:\.${LABEL})*\.[A-Za-z]{2,}${B}`;
const CARD = String.raw`${B}[0-9](?:[ -]?[0-9]){12,18}${B}`;
const SSN = String.raw`${B}[0-9]{3}-[0-9]{2}-[0-9]{4}${B}`;
// The same patterns as the Rust detector, tried in the same priority order.
const DETECT = new RegExp(`(?<email>${EMAIL})|(?<card>${CARD})|(?<ssn>${SSN})`, "gu");
const STRING = /"(?:[^"\\]|\\.)*"/g;

function digits(text) {
  return [...text].filter((c) => c >= "0" && c <= "9").map(Number);
}

function luhn(text) {
  const d = digits(text);
  let sum = 0;
  d.reverse().forEach((x, i) => {
    if (i % 2 === 1) {
      x *= 2;
      if (x > 9) x -= 9;
    }
    sum += x;
  });
  return d.length > 0 && sum % 10 === 0;
}

function cardOk(text) {
  const n = digits(text).length;
  return n >= 13 && n <= 19 && luhn(text);
}

function ssnOk(text) {
  const d = digits(text);
  const area = d[0] * 100 + d[1] * 10 + d[2];
  const group = d[3] * 10 + d[4];
  const serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8];
  return area !== 0 && area !== 666 && area < 900 && group !== 0 && serial !== 0;
}

// The length of the longest valid match at the start of `text`, or -1.
function validLength(kind, text) {
  if (kind === "email") return text.length;
  if (kind === "ssn") return ssnOk(text) ? text.length : -1;
  if (cardOk(text)) return text.length;
  for (let i = text.length - 1; i > 0; i--) {
    if ((text[i] === " " || text[i] === "-") && cardOk(text.slice(0, i))) return i;
  }
  return -1;
}

// `s` with every detected span masked, or null when it holds none.
function redact(s) {
  const out = [];
  let copied = 0;
  let pos = 0;
  while (pos < s.length) {
    DETECT.lastIndex = pos;
    const m = DETECT.exec(s);
    if (m === null) break;
    const kind = m.groups.email !== undefined ? "email" : m.groups.card !== undefined ? "card" : "ssn";
    const n = validLength(kind, m[0]);
    if (n < 0) {
      pos = m.index + (s.codePointAt(m.index) > 0xffff ? 2 : 1);
      continue;
    }
    out.push(s.slice(copied, m.index), `[REDACTED:${kind}]`);
    copied = pos = m.index + n;
  }
  if (out.length === 0) return null;
  out.push(s.slice(copied));
  return out.join("");
}

function redactLine(line) {
  let out = "";
  let copied = 0;
  STRING.lastIndex = 0;
  let m;
  while ((m = STRING.exec(line)) !== null) {
    const end = m.index + m[0].length;
    const rest = line.slice(end).trimStart();
    if (rest[0] === ":") continue; // a key
    const token = m[0];
    const text = token.includes("\\") ? JSON.parse(token) : token.slice(1, -1);
    const red = redact(text);
    if (red !== null) {
      out += line.slice(copied, m.index) + JSON.stringify(red);
      copied = end;
    }
  }
  return out + line.slice(copied);
}

export function init(config) {
  let parsed;
  try {
    parsed = JSON.parse(config);
  } catch (e) {
    throw { tag: "invalid-config", val: `config is not JSON: ${e}` };
  }
  if (typeof parsed !== "object" || parsed === null || Object.keys(parsed).length !== 0) {
    throw { tag: "invalid-config", val: "this redactor takes no options: config must be {}" };
  }
}

export function process(batch) {
  const lines = new TextDecoder().decode(batch).split("\n");
  let out = "";
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.length === 0) continue;
    if (line[0] !== "{") {
      throw { tag: "failed", val: `line ${i + 1}: record is not a JSON object` };
    }
    out += redactLine(line) + "\n";
  }
  return new TextEncoder().encode(out);
}
