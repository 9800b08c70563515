// The Weir redaction rules in C: the "portable" rule set of the first-party Rust
// plugin (`builtin:pii-redact` with `{"kinds":["email","card","ssn"]}`), as a Wasm
// component of the `weir:plugin/transform` world. See ../README.md.
//
// Every string value of a record (not the keys) is searched for e-mail addresses,
// payment cards (13-19 digits, spaces or dashes allowed, Luhn-checked) and US social
// security numbers (area/group/serial rules); each match becomes
// `[REDACTED:KIND]`. Everything else in the line is copied byte for byte.

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "transform.h"

// ---- growable byte buffer -------------------------------------------------------

typedef struct {
  uint8_t *ptr;
  size_t len, cap;
} buf_t;

static bool buf_reserve(buf_t *b, size_t extra) {
  if (b->len + extra <= b->cap) return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra) cap *= 2;
  uint8_t *p = realloc(b->ptr, cap);
  if (!p) return false;
  b->ptr = p;
  b->cap = cap;
  return true;
}

static bool buf_put(buf_t *b, const uint8_t *s, size_t n) {
  if (!buf_reserve(b, n)) return false;
  memcpy(b->ptr + b->len, s, n);
  b->len += n;
  return true;
}

static bool buf_byte(buf_t *b, uint8_t c) { return buf_put(b, &c, 1); }

static bool buf_str(buf_t *b, const char *s) { return buf_put(b, (const uint8_t *)s, strlen(s)); }

// ---- word characters, as regex `\b` sees them ----------------------------------

// Decodes the UTF-8 code point at s[i] (or before it, with `before`); returns its
// length in bytes.
static size_t utf8_at(const uint8_t *s, size_t n, size_t i, uint32_t *cp) {
  uint8_t c = s[i];
  size_t len = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
  if (i + len > n) len = 1;
  uint32_t v = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
  for (size_t k = 1; k < len; k++) v = (v << 6) | (s[i + k] & 0x3f);
  *cp = v;
  return len;
}

// Word characters: ASCII letters, digits and '_', and the letters of the common
// scripts (Latin, Greek, Cyrillic, CJK, kana, Hangul) approximating Unicode's `\w`.
static bool word_cp(uint32_t c) {
  if (c < 0x80)
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
  if (c == 0xaa || c == 0xb5 || c == 0xba) return true;
  if (c >= 0xc0 && c <= 0x2ff) return c != 0xd7 && c != 0xf7;
  if (c >= 0x370 && c <= 0x52f) return c != 0x37e && c != 0x387;
  if (c >= 0x3040 && c <= 0x30ff) return true;
  if (c >= 0x4e00 && c <= 0x9fff) return true;
  if (c >= 0xac00 && c <= 0xd7a3) return true;
  return false;
}

static bool word_after(const uint8_t *s, size_t n, size_t i) {
  if (i >= n) return false;
  uint32_t cp;
  utf8_at(s, n, i, &cp);
  return word_cp(cp);
}

static bool word_before(const uint8_t *s, size_t n, size_t i) {
  if (i == 0) return false;
  size_t j = i - 1;
  while (j > 0 && (s[j] & 0xc0) == 0x80) j--;
  uint32_t cp;
  utf8_at(s, n, j, &cp);
  return word_cp(cp);
}

static bool boundary(const uint8_t *s, size_t n, size_t i) {
  return word_before(s, n, i) != word_after(s, n, i);
}

static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static bool is_alpha(uint8_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static bool is_alnum(uint8_t c) { return is_digit(c) || is_alpha(c); }

// ---- detectors: each returns the end of its match at `p`, or 0 ------------------

enum kind { EMAIL, CARD, SSN };
static const char *KIND_NAME[] = {"email", "card", "ssn"};

static bool local_char(uint8_t c) {
  return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

// A domain label: alphanumerics at both ends, hyphens inside; returns its end or 0.
static size_t label_end(const uint8_t *s, size_t n, size_t i) {
  if (i >= n || !is_alnum(s[i])) return 0;
  size_t j = i;
  while (j < n && (is_alnum(s[j]) || s[j] == '-')) j++;
  return is_alnum(s[j - 1]) ? j : 0;  // a label cut short could not be followed by '.'
}

// `.TLD` at `dot`: two or more letters followed by a non-word character.
static size_t tld_end(const uint8_t *s, size_t n, size_t dot) {
  if (dot >= n || s[dot] != '.') return 0;
  size_t j = dot + 1;
  while (j < n && is_alpha(s[j])) j++;
  if (j - (dot + 1) < 2 || word_after(s, n, j)) return 0;
  return j;
}

static size_t match_email(const uint8_t *s, size_t n, size_t p) {
  if (!local_char(s[p]) || !boundary(s, n, p)) return 0;
  size_t at = p;
  while (at < n && local_char(s[at])) at++;
  if (at >= n || s[at] != '@') return 0;
  size_t first = label_end(s, n, at + 1);
  if (!first) return 0;
  // Labels as far as they go (greedy), then back off one at a time to find the TLD.
  size_t ends[256];
  size_t k = 0;
  ends[k++] = first;
  while (k < 256 && ends[k - 1] < n && s[ends[k - 1]] == '.') {
    size_t e = label_end(s, n, ends[k - 1] + 1);
    if (!e) break;
    ends[k++] = e;
  }
  while (k > 0) {
    size_t e = tld_end(s, n, ends[k - 1]);
    if (e) return e;
    k--;
  }
  return 0;
}

static size_t match_card(const uint8_t *s, size_t n, size_t p, size_t *digit_ends, size_t *reps) {
  if (!is_digit(s[p]) || !boundary(s, n, p)) return 0;
  size_t j = p + 1, r = 0;
  while (r < 18) {
    if (j + 1 < n && (s[j] == ' ' || s[j] == '-') && is_digit(s[j + 1])) {
      j += 2;
    } else if (j < n && is_digit(s[j])) {
      j += 1;
    } else {
      break;
    }
    digit_ends[r++] = j;
  }
  while (r >= 12) {
    if (!word_after(s, n, digit_ends[r - 1])) {
      *reps = r;
      return digit_ends[r - 1];
    }
    r--;
  }
  return 0;
}

static size_t match_ssn(const uint8_t *s, size_t n, size_t p) {
  if (p + 11 > n || !boundary(s, n, p)) return 0;
  static const char shape[] = "ddd-dd-dddd";
  for (size_t k = 0; k < 11; k++) {
    if (shape[k] == 'd' ? !is_digit(s[p + k]) : s[p + k] != '-') return 0;
  }
  return word_after(s, n, p + 11) ? 0 : p + 11;
}

static bool luhn_ok(const uint8_t *s, size_t a, size_t b, size_t *count) {
  unsigned sum = 0, i = 0;
  for (size_t k = b; k > a; k--) {
    uint8_t c = s[k - 1];
    if (!is_digit(c)) continue;
    unsigned d = c - '0';
    if (i % 2 == 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    i++;
  }
  *count = i;
  return i > 0 && sum % 10 == 0;
}

static bool card_ok(const uint8_t *s, size_t a, size_t b) {
  size_t count;
  bool ok = luhn_ok(s, a, b, &count);
  return ok && count >= 13 && count <= 19;
}

static bool ssn_ok(const uint8_t *s, size_t p) {
  unsigned area = (s[p] - '0') * 100 + (s[p + 1] - '0') * 10 + (s[p + 2] - '0');
  unsigned group = (s[p + 4] - '0') * 10 + (s[p + 5] - '0');
  unsigned serial = 0;
  for (size_t k = 7; k < 11; k++) serial = serial * 10 + (s[p + k] - '0');
  return area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
}

// Appends `s` to `out` with every detected span masked; returns whether any was.
static bool redact(const uint8_t *s, size_t n, buf_t *out) {
  bool any = false, has_at = memchr(s, '@', n) != NULL;
  size_t copied = 0, pos = 0;
  size_t digit_ends[18], reps;
  while (pos < n) {
    size_t p = pos, end = 0;
    int kind = -1;
    // The leftmost position where a pattern matches, in priority order.
    for (; p < n; p++) {
      if ((s[p] & 0xc0) == 0x80) continue;
      if (has_at && (end = match_email(s, n, p))) { kind = EMAIL; break; }
      if ((end = match_card(s, n, p, digit_ends, &reps))) { kind = CARD; break; }
      if ((end = match_ssn(s, n, p))) { kind = SSN; break; }
    }
    if (kind < 0) break;
    // Validate; a card may instead keep its longest valid prefix ending before a
    // separator.
    size_t valid_end = 0;
    if (kind == EMAIL) {
      valid_end = end;
    } else if (kind == SSN) {
      valid_end = ssn_ok(s, p) ? end : 0;
    } else if (card_ok(s, p, end)) {
      valid_end = end;
    } else {
      for (size_t i = end - 1; i > p; i--) {
        if ((s[i] == ' ' || s[i] == '-') && card_ok(s, p, i)) {
          valid_end = i;
          break;
        }
      }
    }
    if (!valid_end) {
      uint32_t cp;
      pos = p + utf8_at(s, n, p, &cp);
      continue;
    }
    if (!buf_put(out, s + copied, p - copied) || !buf_str(out, "[REDACTED:") ||
        !buf_str(out, KIND_NAME[kind]) || !buf_byte(out, ']'))
      abort();
    copied = pos = valid_end;
    any = true;
  }
  if (any && !buf_put(out, s + copied, n - copied)) abort();
  return any;
}

// ---- JSON strings -----------------------------------------------------------------

static int hexval(uint8_t c) {
  if (is_digit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void put_utf8(buf_t *b, uint32_t c) {
  uint8_t t[4];
  size_t n;
  if (c < 0x80) { t[0] = c; n = 1; }
  else if (c < 0x800) { t[0] = 0xc0 | (c >> 6); t[1] = 0x80 | (c & 0x3f); n = 2; }
  else if (c < 0x10000) { t[0] = 0xe0 | (c >> 12); t[1] = 0x80 | ((c >> 6) & 0x3f); t[2] = 0x80 | (c & 0x3f); n = 3; }
  else { t[0] = 0xf0 | (c >> 18); t[1] = 0x80 | ((c >> 12) & 0x3f); t[2] = 0x80 | ((c >> 6) & 0x3f); t[3] = 0x80 | (c & 0x3f); n = 4; }
  if (!buf_put(b, t, n)) abort();
}

static long hex4(const uint8_t *s) {
  long v = 0;
  for (int k = 0; k < 4; k++) {
    int h = hexval(s[k]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

// Decodes the JSON string body s[0..n) (between the quotes) into `out`.
static bool json_unescape(const uint8_t *s, size_t n, buf_t *out) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '\\') {
      if (!buf_byte(out, s[i])) abort();
      continue;
    }
    if (++i >= n) return false;
    switch (s[i]) {
      case '"': buf_byte(out, '"'); break;
      case '\\': buf_byte(out, '\\'); break;
      case '/': buf_byte(out, '/'); break;
      case 'b': buf_byte(out, '\b'); break;
      case 'f': buf_byte(out, '\f'); break;
      case 'n': buf_byte(out, '\n'); break;
      case 'r': buf_byte(out, '\r'); break;
      case 't': buf_byte(out, '\t'); break;
      case 'u': {
        if (i + 4 >= n) return false;
        long c = hex4(s + i + 1);
        if (c < 0) return false;
        i += 4;
        if (c >= 0xd800 && c <= 0xdbff && i + 6 < n && s[i + 1] == '\\' && s[i + 2] == 'u') {
          long lo = hex4(s + i + 3);
          if (lo >= 0xdc00 && lo <= 0xdfff) {
            c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
            i += 6;
          } else {
            return false;
          }
        } else if (c >= 0xd800 && c <= 0xdfff) {
          return false;
        }
        put_utf8(out, (uint32_t)c);
        break;
      }
      default: return false;
    }
  }
  return true;
}

// Appends `s` as a JSON string, escaped the way serde_json does.
static void json_escape(const uint8_t *s, size_t n, buf_t *out) {
  static const char hex[] = "0123456789abcdef";
  buf_byte(out, '"');
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    switch (c) {
      case '"': buf_str(out, "\\\""); break;
      case '\\': buf_str(out, "\\\\"); break;
      case '\b': buf_str(out, "\\b"); break;
      case '\f': buf_str(out, "\\f"); break;
      case '\n': buf_str(out, "\\n"); break;
      case '\r': buf_str(out, "\\r"); break;
      case '\t': buf_str(out, "\\t"); break;
      default:
        if (c < 0x20) {
          char e[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
          buf_str(out, e);
        } else {
          buf_byte(out, c);
        }
    }
  }
  buf_byte(out, '"');
}

static bool is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Redacts every string value of one JSON line into `out`; false on a malformed line.
static bool redact_line(const uint8_t *b, size_t n, buf_t *out, buf_t *text, buf_t *red) {
  size_t i = 0, copied = 0;
  while (i < n) {
    const uint8_t *q = memchr(b + i, '"', n - i);
    if (!q) break;
    size_t start = q - b, j = start + 1;
    bool escaped = false;
    while (j < n && b[j] != '"') {
      if (b[j] == '\\') { escaped = true; j++; }
      j++;
    }
    if (j >= n) return false;
    size_t end = j + 1;
    i = end;
    size_t k = end;
    while (k < n && is_ws(b[k])) k++;
    if (k < n && b[k] == ':') continue;  // a key
    const uint8_t *content = b + start + 1;
    size_t len = end - 1 - (start + 1);
    if (escaped) {
      text->len = 0;
      if (!json_unescape(content, len, text)) return false;
      content = text->ptr;
      len = text->len;
    }
    red->len = 0;
    if (redact(content, len, red)) {
      buf_put(out, b + copied, start - copied);
      json_escape(red->ptr, red->len, out);
      copied = end;
    }
  }
  buf_put(out, b + copied, n - copied);
  return true;
}

// ---- the exports ------------------------------------------------------------------

static void set_error(transform_plugin_error_t *err, uint8_t tag, const char *msg) {
  err->tag = tag;
  // Heap-allocated: the generated post-return frees it.
  transform_string_dup(&err->val.failed, msg);
}

bool exports_transform_init(transform_string_t *config, transform_plugin_error_t *err) {
  size_t a = 0, b = config->len;
  while (a < b && is_ws(config->ptr[a])) a++;
  while (b > a && is_ws(config->ptr[b - 1])) b--;
  bool ok = b - a == 2 && config->ptr[a] == '{' && config->ptr[a + 1] == '}';
  transform_string_free(config);
  if (!ok) {
    set_error(err, WEIR_PLUGIN_TYPES_PLUGIN_ERROR_INVALID_CONFIG, "this redactor takes no options: config must be {}");
    return false;
  }
  return true;
}

bool exports_transform_process(transform_list_u8_t *batch, transform_list_u8_t *ret,
                               transform_plugin_error_t *err) {
  buf_t out = {0}, text = {0}, red = {0};
  buf_reserve(&out, batch->len + batch->len / 8 + 16);
  const uint8_t *b = batch->ptr;
  size_t n = batch->len, i = 0;
  bool ok = true;
  while (i < n) {
    const uint8_t *nl = memchr(b + i, '\n', n - i);
    size_t end = nl ? (size_t)(nl - b) : n;
    if (end > i) {
      if (b[i] != '{' || !redact_line(b + i, end - i, &out, &text, &red)) {
        ok = false;
        break;
      }
      buf_byte(&out, '\n');
    }
    i = end + 1;
  }
  transform_list_u8_free(batch);
  free(text.ptr);
  free(red.ptr);
  if (!ok) {
    free(out.ptr);
    set_error(err, WEIR_PLUGIN_TYPES_PLUGIN_ERROR_FAILED, "a record is not a JSON object");
    return false;
  }
  ret->ptr = out.ptr;
  ret->len = out.len;
  return true;
}
