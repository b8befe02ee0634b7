//! Turns a response into an `Observation` that can be compared between etcd and rota.
//!
//! What legitimately differs between two fresh servers is rewritten; everything else is kept
//! byte-exact, including JSON field order, string escaping (`\u003c`) and the trailing
//! newline:
//! - store indices (X-Etcd-Index, `createdIndex`, `modifiedIndex`, error `index`, 20-digit
//!   in-order key names, the numbers of 101 index causes and 401 causes) become offsets from
//!   the scenario's base index (the index of the fresh server before the first request), so
//!   `<I+1>` is the first write on both. This is stricter than renumbering by first
//!   appearance: arithmetic between indices (a 401's `C-999`) must match too. Parameter
//!   errors (2xx codes) keep their literal `0`.
//! - `expiration` timestamps: replaced by `<rfc3339>` when well-formed.
//! - `ttl` (the remaining seconds, rounded up, counting down while a scenario runs): a
//!   positive one becomes its band of ten, `<ttl 91..100>`, so a key read a few seconds
//!   after it was set (a loaded machine can take a second for a few requests) compares
//!   equal; a ttl set to something else (scenarios set 100, 200, ...) or one too high
//!   still differs. The exact rounding is rota-core's unit tests' (with a fixed clock).
//! - X-Etcd-Cluster-Id, X-Raft-Index, X-Raft-Term, member ids: presence (and shape).
//! - ports of the two servers' URLs: `<client-port>` / `<peer-port>`.
//! - listings without `sorted=true`: `nodes` are compared as multisets (sorted by key).

use std::fmt;

use crate::http::Response;

/// Headers whose exact value is compared.
const EXACT_HEADERS: &[&str] = &[
    "content-type",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "allow",
    "location",
];
/// Headers compared by presence only.
const PRESENCE_HEADERS: &[&str] = &["x-etcd-cluster-id", "x-raft-index", "x-raft-term"];

/// One normalized response (or a scenario-computed fact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// What was sent (for messages only; not compared: it contains absolute indices).
    pub label: String,
    pub status: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Observation {
    /// The compared part.
    pub fn key(&self) -> (&str, &[(String, String)], &str) {
        (&self.status, &self.headers, &self.body)
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        for (n, v) in &self.headers {
            write!(f, "\n      {n}: {v}")?;
        }
        write!(f, "\n      body: {}", self.body)
    }
}

/// How a body is framed. Compared for watches only (their head must be flushed before the
/// event, which needs chunking); for other answers Go picks chunked or a length by size.
pub fn framing(head: &crate::http::Head) -> &'static str {
    if head.is_chunked() {
        "chunked"
    } else if head.header("content-length").is_some() {
        "content-length"
    } else {
        "none"
    }
}

/// Per-scenario normalization context.
#[derive(Debug, Clone)]
pub struct Normalizer {
    pub base_index: u64,
    pub client_port: u16,
    pub peer_port: u16,
    /// Replace every JSON leaf by its type (for endpoints whose values are inherently
    /// server-specific, like `/v2/stats/self`).
    pub shape_only: bool,
}

/// How a request shapes the comparison of its response.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTraits {
    pub sorted: bool,
}

impl Normalizer {
    pub fn rel(&self, index: u64) -> String {
        let offset = index as i128 - self.base_index as i128;
        format!("<I{offset:+}>")
    }

    fn ports(&self, s: &str) -> String {
        s.replace(
            &format!("127.0.0.1:{}", self.client_port),
            "127.0.0.1:<client-port>",
        )
        .replace(
            &format!("127.0.0.1:{}", self.peer_port),
            "127.0.0.1:<peer-port>",
        )
    }

    /// Normalizes status + headers; `body` is normalized separately (a watch head arrives
    /// before its body).
    pub fn head(
        &self,
        resp: &crate::http::Head,
        error_code: Option<u64>,
    ) -> (String, Vec<(String, String)>) {
        let status = resp.status.to_string();
        let mut headers = Vec::new();
        for name in EXACT_HEADERS {
            if let Some(v) = resp.header(name) {
                headers.push((name.to_string(), self.ports(v)));
            }
        }
        for name in PRESENCE_HEADERS {
            if let Some(v) = resp.header(name) {
                let shape = if *name == "x-etcd-cluster-id" {
                    if is_hex(v, 16) {
                        "<hex id>".to_string()
                    } else {
                        format!("<malformed {v:?}>")
                    }
                } else if v.parse::<u64>().is_ok() {
                    "<number>".to_string()
                } else {
                    format!("<malformed {v:?}>")
                };
                headers.push((name.to_string(), shape));
            }
        }
        if let Some(v) = resp.header("x-etcd-index") {
            // A HEAD answer has no body to read the error code from; a 400 with index 0 is a
            // parameter error there (store errors carry the current index).
            let head_parameter_error = resp.status == 400 && error_code.is_none();
            let norm = match v.parse::<u64>() {
                Ok(0) if error_code.is_some_and(is_parameter_error) || head_parameter_error => {
                    "0".to_string()
                }
                Ok(n) => self.rel(n),
                Err(_) => format!("<malformed {v:?}>"),
            };
            headers.push(("x-etcd-index".into(), norm));
        }
        (status, headers)
    }

    /// Normalizes a body given the request's traits.
    pub fn body(&self, body: &[u8], traits: RequestTraits) -> String {
        let text = String::from_utf8_lossy(body);
        let trimmed = text.trim_end_matches('\n');
        let newline = if text.ends_with('\n') { "⏎" } else { "" };
        match parse_json(trimmed) {
            Ok(json) if matches!(json, J::Obj(_) | J::Arr(_)) => {
                let error_code = error_code_of(&json);
                let json = self.json(json, traits, error_code);
                let mut out = String::new();
                write_json(&json, &mut out);
                format!("{out}{newline}")
            }
            _ => format!("{:?}", self.ports(&text)),
        }
    }

    fn json(&self, json: J, traits: RequestTraits, error_code: Option<u64>) -> J {
        if self.shape_only {
            return shape(json);
        }
        match json {
            J::Obj(fields) => J::Obj(
                fields
                    .into_iter()
                    .map(|(k, v)| {
                        let v = self.field(&k, v, traits, error_code);
                        (k, v)
                    })
                    .collect(),
            ),
            J::Arr(items) => J::Arr(
                items
                    .into_iter()
                    .map(|v| self.json(v, traits, error_code))
                    .collect(),
            ),
            J::Str(s) => J::Str(self.ports(&s)),
            other => other,
        }
    }

    fn field(&self, name: &str, value: J, traits: RequestTraits, error_code: Option<u64>) -> J {
        match (name, value) {
            ("createdIndex" | "modifiedIndex", J::Num(n)) => J::Num(self.rel_str(&n)),
            ("index", J::Num(n)) => {
                if n == "0" && error_code.is_some_and(is_parameter_error) {
                    J::Num(n)
                } else {
                    J::Num(self.rel_str(&n))
                }
            }
            ("expiration", J::Str(s)) => J::Str(if is_rfc3339_utc(&s) {
                "<rfc3339>".into()
            } else {
                format!("<malformed {s}>")
            }),
            ("ttl", J::Num(n)) => J::Num(ttl_band(&n)),
            ("key", J::Str(s)) => J::Str(self.in_order_names(&s)),
            ("cause", J::Str(s)) => J::Str(self.cause(&s, error_code)),
            ("id", J::Str(s)) if is_hex(&s, 16) => J::Str("<member id>".into()),
            ("etcdserver" | "etcdcluster", J::Str(s)) => J::Str(version_shape(&s)),
            ("nodes", J::Arr(items)) => {
                let mut items: Vec<J> = items
                    .into_iter()
                    .map(|v| self.json(v, traits, error_code))
                    .collect();
                if !traits.sorted {
                    items.sort_by_cached_key(|item| {
                        let mut s = String::new();
                        write_json(item, &mut s);
                        s
                    });
                }
                J::Arr(items)
            }
            (_, other) => self.json(other, traits, error_code),
        }
    }

    fn rel_str(&self, n: &str) -> String {
        match n.parse::<u64>() {
            Ok(v) => self.rel(v),
            Err(_) => format!("<malformed {n}>"),
        }
    }

    /// Rewrites 20-digit runs (in-order key names are `%020d` of the index).
    fn in_order_names(&self, s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_digit() {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let run = &s[start..i];
                if run.len() == 20 {
                    out.push_str(&format!("<%020d {}>", self.rel_str(run)));
                } else {
                    out.push_str(run);
                }
            } else {
                let ch = s[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
        out
    }

    /// 101 (`[a != b]` with numeric sides = prevIndex vs modifiedIndex; scenarios never use
    /// all-digit values for prevValue tests) and 401 (`[oldest/requested]`) causes carry
    /// indices.
    fn cause(&self, s: &str, error_code: Option<u64>) -> String {
        let s = self.in_order_names(s);
        match error_code {
            Some(101) => rewrite_brackets(&s, |inner| {
                let (a, b) = inner.split_once(" != ")?;
                Some(format!(
                    "[{} != {}]",
                    self.rel(a.parse().ok()?),
                    self.rel(b.parse().ok()?)
                ))
            }),
            Some(401) => rewrite_brackets(&s, |inner| {
                let (a, b) = inner.split_once('/')?;
                Some(format!(
                    "[{}/{}]",
                    self.rel(a.parse().ok()?),
                    self.rel(b.parse().ok()?)
                ))
            }),
            _ => s,
        }
    }
}

/// A positive ttl's band of ten (`1..10`, `11..20`, ...); others are kept (a negative one
/// is a key past its expiry, not swept yet).
fn ttl_band(n: &str) -> String {
    match n.parse::<i64>() {
        Ok(ttl) if ttl > 0 => {
            let top = (ttl + 9) / 10 * 10;
            format!("<ttl {}..{top}>", top - 9)
        }
        _ => n.to_string(),
    }
}

/// Parameter errors (2xx codes) answer with index 0 on both servers.
fn is_parameter_error(code: u64) -> bool {
    (200..300).contains(&code)
}

pub fn error_code_of_body(body: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(body);
    parse_json(text.trim_end())
        .ok()
        .as_ref()
        .and_then(error_code_of)
}

fn error_code_of(json: &J) -> Option<u64> {
    match json {
        J::Obj(fields) => fields.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("errorCode", J::Num(n)) => n.parse().ok(),
            _ => None,
        }),
        _ => None,
    }
}

/// Applies `f` to the inside of every `[...]` group; groups `f` rejects are kept.
fn rewrite_brackets(s: &str, f: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close) => {
                let inner = &after[..close];
                out.push_str(&f(inner).unwrap_or_else(|| format!("[{inner}]")));
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Go prints ids with `%x`: up to `len_max` lowercase hex digits, no zero padding.
fn is_hex(s: &str, len_max: usize) -> bool {
    (1..=len_max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `2026-11-22T12:13:51.604243524Z`: RFC 3339, UTC, optional fraction.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    if b.len() < 20 || !s.ends_with('Z') {
        return false;
    }
    let fixed = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let frac = &s[19..s.len() - 1];
    fixed
        && (frac.is_empty()
            || (frac.starts_with('.')
                && frac.len() > 1
                && frac[1..].bytes().all(|c| c.is_ascii_digit())))
}

/// etcd reports its own version; rota reports its. Both must be `X.Y.Z` strings.
fn version_shape(s: &str) -> String {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
    {
        "<X.Y.Z>".into()
    } else {
        format!("<not X.Y.Z: {s}>")
    }
}

fn shape(json: J) -> J {
    match json {
        J::Obj(fields) => J::Obj(fields.into_iter().map(|(k, v)| (k, shape(v))).collect()),
        J::Arr(items) => J::Arr(items.into_iter().map(shape).collect()),
        J::Str(_) => J::Str("<string>".into()),
        J::Num(_) => J::Num("<number>".into()),
        J::Bool(_) => J::Num("<bool>".into()),
        J::Null => J::Null,
    }
}

pub fn normalize_response(
    norm: &Normalizer,
    label: String,
    resp: &Response,
    traits: RequestTraits,
) -> Observation {
    let code = error_code_of_body(&resp.body);
    let (status, headers) = norm.head(&resp.head, code);
    Observation {
        label,
        status,
        headers,
        body: norm.body(&resp.body, traits),
    }
}

// ---- A JSON value that keeps field order and the raw text of strings and numbers. ----

/// Field order and string escapes are part of etcd's wire format, so they are kept as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    /// Raw number text.
    Num(String),
    /// Raw string contents between the quotes (escapes kept).
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

pub fn parse_json(text: &str) -> Result<J, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing bytes at {}", p.i));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

const JSON_DEPTH_MAX: usize = 256;

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }
    fn value(&mut self) -> Result<J, String> {
        self.ws();
        self.depth += 1;
        if self.depth > JSON_DEPTH_MAX {
            return Err("too deep".into());
        }
        let v = match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.eat(b':')?;
                        let v = self.value()?;
                        fields.push((k, v));
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(format!("bad object at {}", self.i)),
                        }
                    }
                }
                J::Obj(fields)
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                } else {
                    loop {
                        items.push(self.value()?);
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(format!("bad array at {}", self.i)),
                        }
                    }
                }
                J::Arr(items)
            }
            Some(b'"') => J::Str(self.string()?),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                J::Bool(true)
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                J::Bool(false)
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                J::Null
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                J::Num(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
            _ => return Err(format!("unexpected byte at {}", self.i)),
        };
        self.depth -= 1;
        Ok(v)
    }
    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return Err(format!("expected string at {}", self.i));
        }
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    let raw = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                    self.i += 1;
                    return Ok(raw);
                }
                _ => self.i += 1,
            }
        }
        Err("unterminated string".into())
    }
}

pub fn write_json(j: &J, out: &mut String) {
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(n),
        J::Str(s) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        J::Obj(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(k);
                out.push_str("\":");
                write_json(v, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm() -> Normalizer {
        Normalizer {
            base_index: 3,
            client_port: 1,
            peer_port: 2,
            shape_only: false,
        }
    }

    #[test]
    fn normalizer_rewrites_indices_as_offsets_and_keeps_field_order() {
        let body = br#"{"action":"create","node":{"key":"/q/00000000000000000007","value":"a\u003c","modifiedIndex":7,"createdIndex":7}}
"#;
        let out = norm().body(body, RequestTraits::default());
        assert_eq!(
            out,
            r#"{"action":"create","node":{"key":"/q/<%020d <I+4>>","value":"a\u003c","modifiedIndex":<I+4>,"createdIndex":<I+4>}}⏎"#
        );
    }

    #[test]
    fn normalizer_keeps_literal_zero_of_parameter_errors_only() {
        let p = norm().body(
            br#"{"errorCode":202,"message":"m","index":0}"#,
            RequestTraits::default(),
        );
        assert!(p.contains("\"index\":0"), "{p}");
        let s = norm().body(
            br#"{"errorCode":100,"message":"m","index":0}"#,
            RequestTraits::default(),
        );
        assert!(s.contains("\"index\":<I-3>"), "{s}");
    }

    #[test]
    fn normalizer_rewrites_401_and_101_index_causes() {
        let c = norm().body(
            br#"{"errorCode":401,"cause":"the requested history has been cleared [1308/1307]","index":2307}"#,
            RequestTraits::default(),
        );
        assert!(c.contains("[<I+1305>/<I+1304>]"), "{c}");
        let c = norm().body(
            br#"{"errorCode":101,"cause":"[four != three] [99 != 14]","index":14}"#,
            RequestTraits::default(),
        );
        assert!(c.contains("[four != three] [<I+96> != <I+11>]"), "{c}");
    }

    #[test]
    fn unsorted_nodes_compare_as_sets_but_sorted_ones_keep_order() {
        let a = br#"{"node":{"nodes":[{"key":"/b"},{"key":"/a"}]}}"#;
        let b = br#"{"node":{"nodes":[{"key":"/a"},{"key":"/b"}]}}"#;
        let unsorted = RequestTraits::default();
        assert_eq!(norm().body(a, unsorted), norm().body(b, unsorted));
        let sorted = RequestTraits { sorted: true };
        assert_ne!(norm().body(a, sorted), norm().body(b, sorted));
    }

    #[test]
    fn ttls_compare_within_their_band_of_ten() {
        let ttl = |n: i64| norm().body(format!(r#"{{"node":{{"ttl":{n}}}}}"#).as_bytes(), RequestTraits::default());
        assert_eq!(ttl(100), r#"{"node":{"ttl":<ttl 91..100>}}"#);
        assert_eq!(ttl(100), ttl(98), "counted down for two seconds");
        assert_ne!(ttl(100), ttl(101));
        assert_ne!(ttl(100), ttl(200));
        assert_eq!(ttl(1), r#"{"node":{"ttl":<ttl 1..10>}}"#);
        assert_eq!(ttl(-1), r#"{"node":{"ttl":-1}}"#);
    }

    #[test]
    fn rfc3339_check_accepts_go_format_only() {
        assert!(is_rfc3339_utc("2026-11-22T12:13:51.604243524Z"));
        assert!(is_rfc3339_utc("2026-11-22T12:13:51Z"));
        assert!(!is_rfc3339_utc("2026-11-22 12:13:51Z"));
        assert!(!is_rfc3339_utc("2026-11-22T12:13:51.604+00:00"));
    }
}
