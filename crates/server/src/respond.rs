//! Response builders shared by the handlers: etcd's headers, error envelopes and Go's
//! plain-text answers (404, 405, 301, 400), each byte-compatible with what etcd sends.

use axum::body::Body;
use axum::http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE, LOCATION};
use axum::http::{Response, StatusCode};
use rota_core::v2::V2Error;

pub const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
pub const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
pub const TEXT_HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");

pub static X_ETCD_INDEX: HeaderName = HeaderName::from_static("x-etcd-index");
pub static X_RAFT_INDEX: HeaderName = HeaderName::from_static("x-raft-index");
pub static X_RAFT_TERM: HeaderName = HeaderName::from_static("x-raft-term");
pub static X_ETCD_CLUSTER_ID: HeaderName = HeaderName::from_static("x-etcd-cluster-id");
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
static X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
static ACCESS_CONTROL_ALLOW_ORIGIN: HeaderName =
    HeaderName::from_static("access-control-allow-origin");
static ACCESS_CONTROL_ALLOW_METHODS: HeaderName =
    HeaderName::from_static("access-control-allow-methods");
static ACCESS_CONTROL_ALLOW_HEADERS: HeaderName =
    HeaderName::from_static("access-control-allow-headers");

/// The `Idempotency-Key` header of a request, if any, checked as `/v2` and `/v1` take it:
/// one header, 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`](crate::limits::IDEMPOTENCY_KEY_BYTES_MAX)
/// visible ASCII characters; else the cause of the 400. (Of two headers, which one names the
/// request? A retry that sends only the other would run again.)
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Idempotency-Key header".to_string());
    }
    let bytes = value.as_bytes();
    let max = crate::limits::IDEMPOTENCY_KEY_BYTES_MAX;
    if bytes.is_empty() || bytes.len() > max || !bytes.iter().all(u8::is_ascii_graphic) {
        return Err(format!("Idempotency-Key must be 1 to {max} visible ASCII characters"));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// What Go's server answers itself, before any handler, to a request it will not take: the
/// status, `text` as a plain-text body, and `Connection: close` (the body may be unread).
pub fn go_server_refusal(status: u16, text: &'static str) -> Response<Body> {
    let mut response = with_status(status, text);
    let headers = response.headers_mut();
    if !text.is_empty() {
        headers.insert(CONTENT_TYPE, TEXT_PLAIN);
    }
    headers.insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// etcd's CORS headers, for `origin` (`*`: any).
pub fn add_cors(response: &mut Response<Body>, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN.clone(), origin);
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS.clone(),
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS.clone(),
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

pub fn with_status(status: u16, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

/// A JSON body with its status and `Content-Type: application/json`.
pub fn json(status: u16, body: impl Into<Body>) -> Response<Body> {
    let mut response = with_status(status, body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON);
    response
}

/// An etcd v2 error: its JSON, its status, `X-Etcd-Index` = the error's index, no Raft headers.
pub fn v2_error(error: &V2Error) -> Response<Body> {
    let mut response = json(error.http_status(), error.to_json());
    response
        .headers_mut()
        .insert(X_ETCD_INDEX.clone(), HeaderValue::from(error.index));
    response
}

/// One of rota's own errors (limits, idempotency) in etcd's envelope, so etcd clients parse
/// it: `{"errorCode":..,"message":..,"cause":..,"index":..}`.
pub fn rota_error(
    status: u16,
    code: u16,
    message: &str,
    cause: &str,
    index: u64,
) -> Response<Body> {
    let mut body = String::with_capacity(64 + message.len() + cause.len());
    body.push_str("{\"errorCode\":");
    body.push_str(&code.to_string());
    body.push_str(",\"message\":");
    push_go_json_string(&mut body, message);
    if !cause.is_empty() {
        body.push_str(",\"cause\":");
        push_go_json_string(&mut body, cause);
    }
    body.push_str(",\"index\":");
    body.push_str(&index.to_string());
    body.push_str("}\n");
    let mut response = json(status, body);
    response
        .headers_mut()
        .insert(X_ETCD_INDEX.clone(), HeaderValue::from(index));
    response
}

/// Go's `http.Error`: text/plain, `X-Content-Type-Options: nosniff`, the text plus `\n`.
pub fn go_http_error(status: u16, text: &str) -> Response<Body> {
    let mut response = with_status(status, format!("{text}\n"));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, TEXT_PLAIN);
    headers.insert(
        X_CONTENT_TYPE_OPTIONS.clone(),
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Go's `http.NotFound`.
pub fn not_found() -> Response<Body> {
    go_http_error(404, "404 page not found")
}

/// etcd's `allowMethod` refusal: `Allow` lists the methods joined by `,`.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = go_http_error(405, "Method Not Allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// What Go's server answers to a request line it can't parse (e.g. `%zz` in the path).
pub fn go_bad_request() -> Response<Body> {
    let mut response = with_status(400, "400 Bad Request");
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, TEXT_PLAIN);
    headers.insert(
        axum::http::header::CONNECTION,
        HeaderValue::from_static("close"),
    );
    response
}

/// Go's `http.Redirect` with 301, as `ServeMux` sends it for unclean paths: an HTML body
/// for GET, the content type also for HEAD, only the `Location` otherwise.
pub fn moved_permanently(location: &str, is_get: bool, is_head: bool) -> Response<Body> {
    let body = if is_get {
        format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            html_escape(location)
        )
    } else {
        String::new()
    };
    let mut response = with_status(301, body);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, value);
    }
    if is_get || is_head {
        headers.insert(CONTENT_TYPE, TEXT_HTML);
    }
    response
}

/// Go's `html.EscapeString` (as `http.Redirect` uses it).
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON string as Go's `encoding/json` writes it: `<`, `>`, `&`, U+2028 and U+2029
/// escaped, other non-ASCII raw.
pub fn push_go_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_json_strings_escape_html_characters() {
        let mut out = String::new();
        push_go_json_string(&mut out, "<a & b>\"\u{1}é");
        assert_eq!(out, r#""\u003ca \u0026 b\u003e\"\u0001é""#);
    }

    #[test]
    fn redirect_body_escapes_ampersands_like_go() {
        assert_eq!(
            html_escape("/v2/keys/a/b?x=1&y=%20"),
            "/v2/keys/a/b?x=1&amp;y=%20"
        );
    }
}
