//! etcd's exact JSON: field order, Go's HTML escaping of `<`, `>`, `&`, the trailing `\n`,
//! RFC 3339 expirations with nanoseconds.
//!
//! Written by hand rather than through serde because the bytes must equal Go's
//! `encoding/json` output for etcd's structs (`omitempty` rules, escapes, field order).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::{Action, NodeView, V2Error, V2Response};

/// The response body etcd sends for `response`, including the trailing newline.
pub fn render_json(response: &V2Response) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"action\":");
    write_string(&mut out, response.action.as_str());
    out.push_str(",\"node\":");
    write_node(&mut out, &response.node);
    if let Some(prev_node) = &response.prev_node {
        out.push_str(",\"prevNode\":");
        write_node(&mut out, prev_node);
    }
    out.push_str("}\n");
    out
}

/// Go's `time.Time` JSON form (RFC 3339, UTC, nanoseconds with trailing zeros trimmed).
pub fn format_expiration(expiration_ns: u64) -> String {
    let nanos = (expiration_ns % 1_000_000_000) as u32;
    let time = UNIX_EPOCH + Duration::new(expiration_ns / 1_000_000_000, 0);
    // "YYYY-MM-DDTHH:MM:SSZ"; Go's RFC3339Nano appends ".fraction" without trailing zeros.
    let mut formatted = humantime::format_rfc3339_seconds(time).to_string();
    if nanos != 0 {
        formatted.pop(); // the 'Z'
        let fraction = format!("{nanos:09}");
        formatted.push('.');
        formatted.push_str(fraction.trim_end_matches('0'));
        formatted.push('Z');
    }
    formatted
}

impl V2Response {
    /// 201 for creations (set of a new key, create, every POST), 200 otherwise (etcd's
    /// `Event.IsCreated`).
    pub fn http_status(&self) -> u16 {
        match self.action {
            Action::Create => 201,
            Action::Set if self.prev_node.is_none() => 201,
            _ => 200,
        }
    }
}

impl V2Error {
    pub fn new(code: u16, cause: impl Into<Option<String>>, index: u64) -> V2Error {
        V2Error { code, cause: cause.into(), index }
    }

    /// etcd's exact message for the code (`v2error.errors`); `""` for a code etcd doesn't
    /// know, as Go's map lookup gives.
    pub fn message(&self) -> &'static str {
        match self.code {
            100 => "Key not found",
            101 => "Compare failed",
            102 => "Not a file",
            103 => "Reached the max number of peers in the cluster",
            104 => "Not a directory",
            105 => "Key already exists",
            106 => "The prefix of given key is a keyword in etcd",
            107 => "Root is read only",
            108 => "Directory not empty",
            109 => "Peer address has existed",
            110 => "The request requires user authentication",
            200 => "Value is Required in POST form",
            201 => "PrevValue is Required in POST form",
            202 => "The given TTL in POST form is not a number",
            203 => "The given index in POST form is not a number",
            204 => "Value or TTL is required in POST form",
            205 => "The given timeout in POST form is not a number",
            206 => "Name is required in POST form",
            207 => "Index or value is required",
            208 => "Index and value cannot both be specified",
            209 => "Invalid field",
            210 => "Invalid POST form",
            211 => "Value provided on refresh",
            212 => "A TTL must be provided on refresh",
            300 => "Raft Internal Error",
            301 => "During Leader Election",
            400 => "watcher is cleared due to etcd recovery",
            401 => "The event in requested index is outdated and cleared",
            402 => "Standby Internal Error",
            403 => "Invalid active size",
            404 => "Standby remove delay",
            500 => "Client Internal Error",
            _ => "",
        }
    }

    /// etcd's `v2error.errorStatus`, 400 for every other code.
    pub fn http_status(&self) -> u16 {
        match self.code {
            100 => 404,
            102 | 108 => 403,
            110 => 401,
            101 | 105 => 412,
            300 | 301 => 500,
            _ => 400,
        }
    }

    /// `{"errorCode":..,"message":..,"cause":..,"index":..}` plus `\n`.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(96);
        let _ = write!(out, "{{\"errorCode\":{},\"message\":", self.code);
        write_string(&mut out, self.message());
        if let Some(cause) = self.cause.as_deref().filter(|cause| !cause.is_empty()) {
            out.push_str(",\"cause\":");
            write_string(&mut out, cause);
        }
        let _ = write!(out, ",\"index\":{}}}", self.index);
        out.push('\n');
        out
    }
}

impl std::fmt::Display for V2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // etcd's `Error.Error()`.
        write!(f, "{} ({})", self.message(), self.cause.as_deref().unwrap_or(""))
    }
}

impl std::error::Error for V2Error {}

/// etcd's `NodeExtern` with Go's `omitempty`: an empty key, a nil value, `dir: false`, a
/// nil expiration, a zero ttl or index and an empty `nodes` are left out.
fn write_node(out: &mut String, node: &NodeView) {
    out.push('{');
    let mut first = true;
    let mut field = |out: &mut String, name: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
    };
    if let Some(key) = node.key.as_deref().filter(|key| !key.is_empty()) {
        field(out, "key");
        write_string(out, key);
    }
    if let Some(value) = &node.value {
        field(out, "value");
        write_string(out, value);
    }
    if node.dir {
        field(out, "dir");
        out.push_str("true");
    }
    if let Some(expiration_ns) = node.expiration_ns {
        field(out, "expiration");
        out.push('"');
        out.push_str(&format_expiration(expiration_ns));
        out.push('"');
    }
    if let Some(ttl_s) = node.ttl_s.filter(|&ttl_s| ttl_s != 0) {
        // Negative TTLs are written, as Go's omitempty drops only 0.
        field(out, "ttl");
        let _ = write!(out, "{ttl_s}");
    }
    if let Some(nodes) = node.nodes.as_ref().filter(|nodes| !nodes.is_empty()) {
        field(out, "nodes");
        out.push('[');
        for (at, child) in nodes.iter().enumerate() {
            if at > 0 {
                out.push(',');
            }
            write_node(out, child);
        }
        out.push(']');
    }
    if let Some(index) = node.modified_index.filter(|&index| index != 0) {
        field(out, "modifiedIndex");
        let _ = write!(out, "{index}");
    }
    if let Some(index) = node.created_index.filter(|&index| index != 0) {
        field(out, "createdIndex");
        let _ = write!(out, "{index}");
    }
    out.push('}');
}

/// A JSON string as Go's `encoding/json` writes it with HTML escaping on: `"` and `\`
/// escaped, `\n` `\r` `\t` short, other control characters and `<` `>` `&` as `\u00xx`,
/// U+2028 and U+2029 as `\u2028`/`\u2029`, everything else raw UTF-8. Go writes each
/// invalid UTF-8 byte as `\ufffd` (and a real U+FFFD raw). rota stores no key or value
/// that is not UTF-8, but names one in the cause of a "Key not found" after decoding it
/// lossily (invalid bytes became U+FFFD), so U+FFFD is always escaped: etcd's bytes for
/// such a key, and the same JSON string for a real U+FFFD.
fn write_string(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // The bytes that may start an escape: control characters, `"`, `\\`, `<`, `>`, `&`, and
    // the lead bytes of U+2028, U+2029 (E2 80 A8/A9) and U+FFFD (EF BF BD). Everything else
    // is copied as it is, by runs; bytes, not chars, as nearly every byte is plain.
    const MAY_ESCAPE: [bool; 256] = {
        let mut table = [false; 256];
        let mut byte = 0;
        while byte < 0x20 {
            table[byte] = true;
            byte += 1;
        }
        table[b'"' as usize] = true;
        table[b'\\' as usize] = true;
        table[b'<' as usize] = true;
        table[b'>' as usize] = true;
        table[b'&' as usize] = true;
        table[0xe2] = true;
        table[0xef] = true;
        table
    };
    out.push('"');
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        if !MAY_ESCAPE[byte as usize] {
            continue;
        }
        let (escape, len): (&str, usize) = match (byte, bytes.get(at + 1..at + 3)) {
            (b'"', _) => ("\\\"", 1),
            (b'\\', _) => ("\\\\", 1),
            (b'\n', _) => ("\\n", 1),
            (b'\r', _) => ("\\r", 1),
            (b'\t', _) => ("\\t", 1),
            (0xe2, Some([0x80, 0xa8])) => ("\\u2028", 3),
            (0xe2, Some([0x80, 0xa9])) => ("\\u2029", 3),
            (0xef, Some([0xbf, 0xbd])) => ("\\ufffd", 3),
            (0xe2 | 0xef, _) => continue,
            _ => ("", 1),
        };
        // Runs end only before an ASCII byte or a lead byte, so on a char boundary.
        out.push_str(&text[plain_from..at]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[(byte >> 4) as usize] as char);
            out.push(HEX[(byte & 0xf) as usize] as char);
        } else {
            out.push_str(escape);
        }
        plain_from = at + len;
    }
    out.push_str(&text[plain_from..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The char-by-char statement of the escaping rules `write_string` implements by bytes.
    fn reference(text: &str) -> String {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                '\u{fffd}' => out.push_str("\\ufffd"),
                c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    proptest! {
        #[test]
        fn write_string_escapes_as_the_char_rules_say(
            text in proptest::collection::vec(
                prop_oneof![
                    any::<char>(),
                    prop::sample::select(vec![
                        '"', '\\', '\n', '\r', '\t', '\u{1}', '\u{1f}', '\u{7f}', '<', '>', '&',
                        '\u{2028}', '\u{2029}', '\u{2027}', '\u{202a}', '\u{fffd}', '\u{fffc}',
                        '\u{fffe}', '\u{2000}', '\u{e000}', 'é', '😀',
                    ]),
                ],
                0..40,
            ).prop_map(|chars| chars.into_iter().collect::<String>())
        ) {
            let mut out = String::new();
            super::write_string(&mut out, &text);
            prop_assert_eq!(out, reference(&text));
        }
    }
}
