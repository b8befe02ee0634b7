//! Request paths as Go's `net/http` sees them: percent-decoded, then cleaned by `ServeMux`,
//! which answers `301` to the cleaned path when cleaning changed anything (`//`, `.`, `..`).
//! etcd's routes are registered on such a mux, so rota reproduces its redirects.

use crate::form::{path_unescape, FormError};

/// Go's `path.Clean`: the shortest equivalent absolute path (no `//`, `.` or `..`, no trailing
/// slash except for the root).
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::with_capacity(8);
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for part in &parts {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Go's `ServeMux` `cleanPath`: [`clean`], but a trailing slash survives.
pub fn mux_clean(path: &str) -> String {
    let mut cleaned = clean(path);
    if path.ends_with('/') && cleaned != "/" {
        cleaned.push('/');
    }
    cleaned
}

/// The decoded path of a request and whether its bytes were UTF-8 (if not, U+FFFD stands
/// for the bad ones), or Go's parse error for an undecodable one.
pub fn decode(raw_path: &str) -> Result<(String, bool), FormError> {
    path_unescape(raw_path.as_bytes())
}

/// Where a request must be redirected, if its decoded path isn't clean: the cleaned path,
/// escaped as Go's `URL.EscapedPath` does, plus the raw query.
pub fn redirect_location(decoded_path: &str, raw_query: Option<&str>) -> Option<String> {
    let cleaned = mux_clean(decoded_path);
    if cleaned == decoded_path {
        return None;
    }
    let mut location = escape_path(&cleaned);
    // Go builds the target as a URL of the path and the raw query: an empty query (a bare
    // `?`) leaves no `?`.
    if let Some(query) = raw_query.filter(|query| !query.is_empty()) {
        location.push('?');
        location.push_str(query);
    }
    Some(location)
}

/// Go's `url.PathEscape`-like escaping in `encodePath` mode: unreserved characters and
/// `$&+,/:;=@` stay, everything else becomes `%XX`.
pub fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &byte in path.as_bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'-' | b'_'
                    | b'.'
                    | b'~'
                    | b'$'
                    | b'&'
                    | b'+'
                    | b','
                    | b'/'
                    | b':'
                    | b';'
                    | b'='
                    | b'@'
            );
        if keep {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(
                char::from_digit(u32::from(byte >> 4), 16)
                    .unwrap_or('0')
                    .to_ascii_uppercase(),
            );
            out.push(
                char::from_digit(u32::from(byte & 0xf), 16)
                    .unwrap_or('0')
                    .to_ascii_uppercase(),
            );
        }
    }
    out
}

/// The etcd key named by the part of a clean path after `/v2/keys`: absolute, cleaned, no
/// trailing slash; `/` for the root.
pub fn key_from_suffix(suffix: &str) -> String {
    clean(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go_path_clean() {
        for (input, want) in [
            ("/", "/"),
            ("", "/"),
            ("/a/b", "/a/b"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/..", "/"),
            ("/a/b/", "/a/b"),
            ("//", "/"),
        ] {
            assert_eq!(clean(input), want, "{input}");
        }
    }

    #[test]
    fn mux_keeps_a_trailing_slash() {
        assert_eq!(mux_clean("/v2/keys/ts/"), "/v2/keys/ts/");
        assert_eq!(mux_clean("/v2/keys/a//b/"), "/v2/keys/a/b/");
        assert_eq!(mux_clean("/v2/keys/.."), "/v2");
        assert_eq!(mux_clean("/v2/keys/"), "/v2/keys/");
    }

    #[test]
    fn double_slash_redirects_to_the_cleaned_path_with_the_query() {
        assert_eq!(redirect_location("/v2/keys/a/b", None), None);
        assert_eq!(redirect_location("/v2/keys/ts/", None), None);
        assert_eq!(
            redirect_location("/v2/keys//", None).as_deref(),
            Some("/v2/keys/")
        );
        assert_eq!(
            redirect_location("/v2/keys/a//b", Some("x=1&y=%20")).as_deref(),
            Some("/v2/keys/a/b?x=1&y=%20")
        );
        assert_eq!(
            redirect_location("/v2/keys/a b//c", None).as_deref(),
            Some("/v2/keys/a%20b/c")
        );
    }

    #[test]
    fn an_empty_query_leaves_no_question_mark_in_the_redirect() {
        assert_eq!(redirect_location("/v2/keys//a", Some("")).as_deref(), Some("/v2/keys/a"));
        assert_eq!(redirect_location("/v2/keys//a", None).as_deref(), Some("/v2/keys/a"));
    }

    #[test]
    fn keys_are_cleaned_without_trailing_slash() {
        assert_eq!(key_from_suffix(""), "/");
        assert_eq!(key_from_suffix("/"), "/");
        assert_eq!(key_from_suffix("/ts/"), "/ts");
        assert_eq!(key_from_suffix("/a/b"), "/a/b");
    }
}
