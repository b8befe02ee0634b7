//! Go's form decoding, reproduced byte for byte where etcd's answers depend on it.
//!
//! etcd parses `/v2/keys` parameters with Go's `Request.ParseForm`: a
//! `application/x-www-form-urlencoded` body (PUT/POST only) followed by the URL query, both
//! split on `&` and unescaped with `url.QueryUnescape`. The first value of a field wins, so a
//! body field beats the same field in the query. Booleans are `strconv.ParseBool`, integers
//! `strconv.ParseUint(s, 10, 64)`. The error texts here are Go's, because etcd sends them to
//! clients as the `cause` of error 210.

use std::fmt::Write as _;

/// Decoded form fields in arrival order; lookups return the first value of a field, as Go's
/// `Values.Get` does. A handful of fields per request, so a vector beats a map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    /// (name, value, whether the value's bytes were UTF-8).
    fields: Vec<(String, String, bool)>,
}

/// Go's `url.ParseQuery` error, rendered exactly as Go renders it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// `url.EscapeError`: `invalid URL escape "%zz"`.
    #[error("invalid URL escape {}", go_quote(.0))]
    InvalidEscape(Vec<u8>),
    /// Go ≥ 1.17 rejects `;` as a separator.
    #[error("invalid semicolon separator in query")]
    Semicolon,
}

impl Form {
    /// Appends the fields of `raw` (a query string or form body). Like Go, a bad pair is
    /// skipped and decoding goes on; the first error is returned after all pairs are read.
    pub fn extend_from_urlencoded(&mut self, raw: &[u8]) -> Result<(), FormError> {
        let mut first_error = None;
        for pair in raw.split(|&b| b == b'&') {
            if pair.is_empty() {
                continue;
            }
            if pair.contains(&b';') {
                first_error.get_or_insert(FormError::Semicolon);
                continue;
            }
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            let key = match query_unescape(key) {
                Ok(key) => key,
                Err(error) => {
                    first_error.get_or_insert(error);
                    continue;
                }
            };
            let (value, utf8) = match unescape(value, true) {
                Ok(value) => value,
                Err(error) => {
                    first_error.get_or_insert(error);
                    continue;
                }
            };
            self.fields.push((key, value, utf8));
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The first value of `name`, if the field is present (even empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _, _)| key == name)
            .map(|(_, value, _)| value.as_str())
    }

    /// Whether the first value of `name` was UTF-8 once unescaped (true when absent). A
    /// value that was not is held with U+FFFD in place of the bad bytes, so two different
    /// byte strings can look the same: keys and values must not be such.
    pub fn is_utf8(&self, name: &str) -> bool {
        self.fields
            .iter()
            .find(|(key, _, _)| key == name)
            .is_none_or(|(_, _, utf8)| *utf8)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte. Bytes that aren't UTF-8 are kept
/// as U+FFFD (Go keeps raw bytes; etcd keys and values are Go strings, which rota can't hold).
pub fn query_unescape(raw: &[u8]) -> Result<String, FormError> {
    unescape(raw, true).map(|(text, _)| text)
}

/// Go's `url.PathUnescape` as used for `URL.Path`: like [`query_unescape`] but `+` stays.
/// The flag says whether the bytes were UTF-8 (if not, U+FFFD stands for the bad ones).
pub fn path_unescape(raw: &[u8]) -> Result<(String, bool), FormError> {
    unescape(raw, false)
}

/// The unescaped text, and whether its bytes were UTF-8.
fn unescape(raw: &[u8], plus_is_space: bool) -> Result<(String, bool), FormError> {
    if !raw
        .iter()
        .any(|&b| b == b'%' || (plus_is_space && b == b'+'))
    {
        // `from_utf8` checks valid text faster than the lossy decoder walks it.
        return Ok(match std::str::from_utf8(raw) {
            Ok(text) => (text.to_owned(), true),
            Err(_) => (String::from_utf8_lossy(raw).into_owned(), false),
        });
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut at = 0;
    while at < raw.len() {
        match raw[at] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    raw.get(at + 1).copied().and_then(hex),
                    raw.get(at + 2).copied().and_then(hex),
                ) {
                    (Some(high), Some(low)) => {
                        bytes.push((high * 16 + low) as u8);
                        at += 3;
                    }
                    _ => {
                        let end = (at + 3).min(raw.len());
                        return Err(FormError::InvalidEscape(raw[at..end].to_vec()));
                    }
                }
            }
            b'+' if plus_is_space => {
                bytes.push(b' ');
                at += 1;
            }
            byte => {
                bytes.push(byte);
                at += 1;
            }
        }
    }
    Ok(match String::from_utf8(bytes) {
        // Valid UTF-8: the buffer is the string.
        Ok(text) => (text, true),
        Err(error) => (String::from_utf8_lossy(error.as_bytes()).into_owned(), false),
    })
}

/// Go's `strconv.Quote` for the short strings that appear in escape errors.
pub fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\x7f' => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseUint(text, 10, 64)`: ASCII digits only (no sign, no spaces, no `_`),
/// at least one, no overflow.
pub fn parse_uint(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok()
}

/// Whether a `Content-Type` header value names a urlencoded form, as Go's
/// `mime.ParseMediaType` sees it (case-insensitive, parameters ignored).
pub fn is_form_content_type(content_type: &[u8]) -> bool {
    let media_type = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    media_type
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
}

/// Go's `mime.ParseMediaType` errors, which `ParseForm` returns for a PUT/POST whose
/// `Content-Type` doesn't parse (etcd answers them as error 210).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MediaTypeError {
    #[error("mime: no media type")]
    NoMediaType,
    #[error("mime: expected slash after first token")]
    ExpectedSlash,
    #[error("mime: expected token after slash")]
    ExpectedToken,
    #[error("mime: unexpected content after media subtype")]
    UnexpectedContent,
    #[error("mime: invalid media parameter")]
    InvalidParameter,
    #[error("mime: duplicate parameter name")]
    DuplicateParameter,
}

/// RFC 1521 token characters, as Go's `mime` package defines them. A table: every form
/// write checks its `Content-Type` byte by byte, and searching the specials list for each
/// byte cost more than the rest of the check.
fn is_token_byte(byte: u8) -> bool {
    const TOKEN: [bool; 256] = {
        let mut table = [false; 256];
        let mut byte = 0x21;
        while byte < 0x7f {
            table[byte] = true;
            byte += 1;
        }
        let specials = b"()<>@,;:\\\"/[]?=";
        let mut at = 0;
        while at < specials.len() {
            table[specials[at] as usize] = false;
            at += 1;
        }
        table
    };
    TOKEN[byte as usize]
}

fn consume_token(text: &[u8]) -> (&[u8], &[u8]) {
    let end = text
        .iter()
        .position(|&b| !is_token_byte(b))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Checks a `Content-Type` value as Go's `mime.ParseMediaType` does (the media type, then
/// `; key=value` parameters with token or quoted-string values) and returns whether it is a
/// urlencoded form.
pub fn parse_media_type(content_type: &[u8]) -> Result<bool, MediaTypeError> {
    let (base, params) = match content_type.iter().position(|&b| b == b';') {
        Some(at) => content_type.split_at(at),
        None => (content_type, &b""[..]),
    };
    let media_type = base.trim_ascii();
    let (kind, rest) = consume_token(media_type);
    if kind.is_empty() {
        return Err(MediaTypeError::NoMediaType);
    }
    if !rest.is_empty() {
        let Some(rest) = rest.strip_prefix(b"/") else {
            return Err(MediaTypeError::ExpectedSlash);
        };
        let (subtype, rest) = consume_token(rest);
        if subtype.is_empty() {
            return Err(MediaTypeError::ExpectedToken);
        }
        if !rest.is_empty() {
            return Err(MediaTypeError::UnexpectedContent);
        }
    }
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut rest = params;
    while !rest.is_empty() {
        rest = rest.trim_ascii_start();
        if rest.is_empty() {
            break;
        }
        // Each parameter is `;` then optional space, `key=value`.
        let Some(after_semicolon) = rest.strip_prefix(b";") else {
            return Err(MediaTypeError::InvalidParameter);
        };
        let after_semicolon = after_semicolon.trim_ascii_start();
        let (key, after_key) = consume_token(after_semicolon);
        if key.is_empty() {
            if after_semicolon.trim_ascii().is_empty() {
                break; // trailing semicolons are fine
            }
            return Err(MediaTypeError::InvalidParameter);
        }
        let Some(after_equals) = after_key.trim_ascii_start().strip_prefix(b"=") else {
            return Err(MediaTypeError::InvalidParameter);
        };
        let after_equals = after_equals.trim_ascii_start();
        let after_value = if let Some(quoted) = after_equals.strip_prefix(b"\"") {
            let mut at = 0;
            loop {
                match quoted.get(at) {
                    None => return Err(MediaTypeError::InvalidParameter),
                    Some(b'"') => break &quoted[at + 1..],
                    Some(b'\\') => at += 2,
                    Some(_) => at += 1,
                }
            }
        } else {
            let (value, after_value) = consume_token(after_equals);
            if value.is_empty() {
                return Err(MediaTypeError::InvalidParameter);
            }
            after_value
        };
        let key = key.to_ascii_lowercase();
        if seen.contains(&key) {
            return Err(MediaTypeError::DuplicateParameter);
        }
        seen.push(key);
        rest = after_value;
    }
    Ok(media_type.eq_ignore_ascii_case(b"application/x-www-form-urlencoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(raw: &str) -> Result<Form, FormError> {
        let mut form = Form::default();
        form.extend_from_urlencoded(raw.as_bytes()).map(|()| form)
    }

    #[test]
    fn token_bytes_are_gos_visible_ascii_minus_the_specials() {
        let specials = "()<>@,;:\\\"/[]?=";
        for byte in 0..=255u8 {
            let expected = (0x21..0x7f).contains(&byte) && !specials.as_bytes().contains(&byte);
            assert_eq!(is_token_byte(byte), expected, "byte {byte:#04x}");
        }
    }

    #[test]
    fn parse_bool_accepts_exactly_gos_spellings() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for bad in ["", "yes", "tRUE", "on", " true", "2", "truE"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_uint_rejects_signs_fractions_and_overflow() {
        assert_eq!(parse_uint("0"), Some(0));
        assert_eq!(parse_uint("007"), Some(7));
        assert_eq!(parse_uint("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "+5",
            "-1",
            "1.5",
            "1e3",
            " 1",
            "18446744073709551616",
            "0x10",
            "1_000",
        ] {
            assert_eq!(parse_uint(bad), None, "{bad}");
        }
    }

    #[test]
    fn undecodable_escape_is_gos_escape_error() {
        assert_eq!(
            form("value=%zz").unwrap_err().to_string(),
            r#"invalid URL escape "%zz""#
        );
        assert_eq!(
            form("value=ab%").unwrap_err().to_string(),
            r#"invalid URL escape "%""#
        );
        assert_eq!(
            form("value=%4").unwrap_err().to_string(),
            r#"invalid URL escape "%4""#
        );
        assert_eq!(
            form("%zz=1").unwrap_err().to_string(),
            r#"invalid URL escape "%zz""#
        );
        // Go cuts three bytes and quotes them: whole characters print, cut ones are \x escapes.
        assert_eq!(
            form("v=%\u{e9}x").unwrap_err().to_string(),
            "invalid URL escape \"%\u{e9}\""
        );
        assert_eq!(
            form("v=%\u{20ac}").unwrap_err().to_string(),
            r#"invalid URL escape "%\xe2\x82""#
        );
    }

    #[test]
    fn semicolons_are_rejected_as_go_does() {
        assert_eq!(form("a=1;b=2").unwrap_err(), FormError::Semicolon);
        assert_eq!(
            FormError::Semicolon.to_string(),
            "invalid semicolon separator in query"
        );
    }

    #[test]
    fn first_value_of_a_field_wins() {
        let mut body_then_query = form("value=body").unwrap();
        body_then_query
            .extend_from_urlencoded(b"value=query&ttl=5")
            .unwrap();
        assert_eq!(body_then_query.get("value"), Some("body"));
        assert_eq!(body_then_query.get("ttl"), Some("5"));
        assert_eq!(body_then_query.get("nope"), None);
    }

    #[test]
    fn plus_is_a_space_and_missing_equals_is_an_empty_value() {
        let parsed = form("value=a+b%20c&dir&&x=%26").unwrap();
        assert_eq!(parsed.get("value"), Some("a b c"));
        assert_eq!(parsed.get("dir"), Some(""));
        assert_eq!(parsed.get("x"), Some("&"));
        assert_eq!(parsed.len(), 3);
    }

    #[test]
    fn path_unescape_keeps_plus() {
        assert_eq!(path_unescape(b"/a+b%20c").unwrap(), ("/a+b c".to_string(), true));
    }

    #[test]
    fn bad_pairs_are_skipped_but_reported() {
        let mut parsed = Form::default();
        let error = parsed.extend_from_urlencoded(b"a=%zz&b=2").unwrap_err();
        assert_eq!(error, FormError::InvalidEscape(b"%zz".to_vec()));
        assert_eq!(parsed.get("b"), Some("2"));
    }

    #[test]
    fn media_types_parse_like_go() {
        assert_eq!(
            parse_media_type(b"application/x-www-form-urlencoded"),
            Ok(true)
        );
        assert_eq!(
            parse_media_type(b"Application/X-WWW-Form-Urlencoded; charset=utf-8"),
            Ok(true)
        );
        assert_eq!(
            parse_media_type(b"application/x-www-form-urlencoded; charset=\"utf-8\";"),
            Ok(true)
        );
        assert_eq!(parse_media_type(b"application/json"), Ok(false));
        assert_eq!(parse_media_type(b"text"), Ok(false));
        assert_eq!(parse_media_type(b""), Err(MediaTypeError::NoMediaType));
        assert_eq!(
            parse_media_type(b"; charset=utf-8"),
            Err(MediaTypeError::NoMediaType)
        );
        assert_eq!(
            parse_media_type(b"text/"),
            Err(MediaTypeError::ExpectedToken)
        );
        assert_eq!(
            parse_media_type(b"text/plain/x"),
            Err(MediaTypeError::UnexpectedContent)
        );
        assert_eq!(
            parse_media_type(b"text plain"),
            Err(MediaTypeError::ExpectedSlash)
        );
        assert_eq!(
            parse_media_type(b"text/plain; charset"),
            Err(MediaTypeError::InvalidParameter)
        );
        assert_eq!(
            parse_media_type(b"text/plain; a=1; A=2"),
            Err(MediaTypeError::DuplicateParameter)
        );
        assert_eq!(
            MediaTypeError::NoMediaType.to_string(),
            "mime: no media type"
        );
    }

    #[test]
    fn form_content_type_is_matched_like_mime_parse_media_type() {
        assert!(is_form_content_type(b"application/x-www-form-urlencoded"));
        assert!(is_form_content_type(
            b"Application/X-WWW-Form-Urlencoded; charset=utf-8"
        ));
        assert!(!is_form_content_type(b"application/json"));
        assert!(!is_form_content_type(b"text/plain"));
    }
}
