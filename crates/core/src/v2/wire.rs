//! etcd's exact JSON: field order, Go's HTML escaping of `<`, `>`, `&`, the trailing `\n`,
//! RFC 3339 expirations with nanoseconds. (Skeleton.)

use super::{V2Error, V2Response};

/// The response body etcd sends for `response`, including the trailing newline.
pub fn render_json(response: &V2Response) -> String {
    let _ = response;
    todo!()
}

/// Go's `time.Time` JSON form (RFC 3339, UTC, nanoseconds with trailing zeros trimmed).
pub fn format_expiration(expiration_ns: u64) -> String {
    let _ = expiration_ns;
    todo!()
}

impl V2Response {
    /// 201 for creations (set of a new key, create, every POST), 200 otherwise.
    pub fn http_status(&self) -> u16 {
        todo!()
    }
}

impl V2Error {
    pub fn new(code: u16, cause: impl Into<Option<String>>, index: u64) -> V2Error {
        V2Error { code, cause: cause.into(), index }
    }

    /// etcd's exact message for the code.
    pub fn message(&self) -> &'static str {
        todo!()
    }

    pub fn http_status(&self) -> u16 {
        todo!()
    }

    /// `{"errorCode":..,"message":..,"cause":..,"index":..}` plus `\n`.
    pub fn to_json(&self) -> String {
        todo!()
    }
}
