//! `/v1` errors: `{"error": {"code", "message", "field"}}` with the status the code implies.
//!
//! Every way a `/v1` request can fail ends here: input the server rejects before proposing
//! (bad JSON, wrong types, unknown fields, out-of-range values), errors the state machine
//! returns ([`JobError`]), proposals that never reached the state machine
//! ([`ProposeError`]) and idempotency conflicts. None of them is a 500: client input never is.

use axum::body::Body;
use axum::http::header::{HeaderValue, ALLOW, RETRY_AFTER};
use axum::http::Response;
use rota_core::jobs::JobError;

use crate::backend::ProposeError;
use crate::respond;

pub(crate) const INVALID: &str = "invalid";
pub(crate) const MALFORMED_JSON: &str = "malformed_json";
pub(crate) const TOO_LARGE: &str = "too_large";
pub(crate) const NOT_FOUND: &str = "not_found";
pub(crate) const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
pub(crate) const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
pub(crate) const NO_LEADER: &str = "no_leader";
pub(crate) const UNAVAILABLE: &str = "unavailable";
pub(crate) const OUTCOME_UNKNOWN: &str = "outcome_unknown";
pub(crate) const NO_SPACE: &str = "no_space";
pub(crate) const TIMEOUT: &str = "timeout";
pub(crate) const INTERNAL: &str = "internal";

/// One `/v1` error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// `Allow` for a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>, field: Option<&str>) -> ApiError {
        ApiError { status, code: code.to_owned(), message: message.into(), field: field.map(str::to_owned), allow: None }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, INVALID, message, Some(field))
    }

    pub fn too_large(field: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError::new(413, TOO_LARGE, message, field)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, NOT_FOUND, message, None)
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut error = ApiError::new(405, METHOD_NOT_ALLOWED, format!("allowed methods: {allow}"), None);
        error.allow = Some(allow);
        error
    }

    pub fn idempotency_key_reused(key: &str) -> ApiError {
        ApiError::new(
            422,
            IDEMPOTENCY_KEY_REUSED,
            format!("Idempotency-Key {key:?} was first used with a different request"),
            None,
        )
    }

    pub fn from_job_error(error: &JobError) -> ApiError {
        ApiError {
            status: job_error_status(&error.code),
            code: error.code.clone(),
            message: error.message.clone(),
            field: error.field.clone(),
            allow: None,
        }
    }

    pub fn from_propose_error(error: &ProposeError) -> ApiError {
        match error {
            ProposeError::NoLeader | ProposeError::LeaderUnreachable { .. } => {
                ApiError::new(503, NO_LEADER, error.to_string(), None)
            }
            // Not 503: with its Retry-After, that says "nothing was done, send it again",
            // and a submit sent again without its key would make a second job.
            ProposeError::OutcomeUnknown(_) => ApiError::new(
                504,
                OUTCOME_UNKNOWN,
                format!("{error}; the request may or may not have been applied: retry it with the same Idempotency-Key"),
                None,
            ),
            ProposeError::TooLarge { .. } => ApiError::too_large(None, error.to_string()),
            ProposeError::ShuttingDown | ProposeError::Fatal(_) | ProposeError::Removed => {
                ApiError::new(503, UNAVAILABLE, error.to_string(), None)
            }
            ProposeError::NoSpace { .. } => ApiError::new(507, NO_SPACE, error.to_string(), None),
        }
    }

    pub fn to_response(&self) -> Response<Body> {
        let mut body = Vec::with_capacity(64 + self.message.len());
        body.extend_from_slice(b"{\"error\":{\"code\":");
        super::json::push_string(&mut body, &self.code);
        body.extend_from_slice(b",\"message\":");
        super::json::push_string(&mut body, &self.message);
        if let Some(field) = &self.field {
            body.extend_from_slice(b",\"field\":");
            super::json::push_string(&mut body, field);
        }
        body.extend_from_slice(b"}}\n");
        let mut response = respond::json(self.status, body);
        let headers = response.headers_mut();
        if self.status == 503 {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// The status of each [`JobError`] code (docs/api-v1.md, "Errors").
pub(crate) fn job_error_status(code: &str) -> u16 {
    match code {
        JobError::INVALID => 400,
        JobError::TOO_LARGE => 413,
        JobError::NOT_FOUND => 404,
        JobError::STALE_LEASE | JobError::INVALID_STATE | JobError::QUEUE_NOT_EMPTY => 409,
        JobError::CAPACITY_EXCEEDED => 507,
        JobError::COUNTER_OVERFLOW => 422,
        // A code this server doesn't know yet is still the client's request at fault.
        _ => 400,
    }
}

/// A request body the JSON decoder refused: malformed JSON (400 `malformed_json`) or
/// well-formed JSON of the wrong shape (400 `invalid`, `field` = the path to the value at
/// fault, e.g. `jobs[2].priority`, or the unknown or missing field's name).
pub(crate) fn from_json_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let path = error.path().to_string();
    let inner = error.inner();
    let message = inner.to_string();
    // Well-formed JSON whose value the decoder cannot hold (`1e400`, a lone surrogate
    // `"\ud800"`): serde_json calls it syntax, but the request names the field at fault.
    let why = rota_core::jobs::unreadable_json_reason(&message).filter(|_| path != ".");
    match inner.classify() {
        Category::Syntax if let Some(why) = why => {
            ApiError::new(400, INVALID, format!("{path}: {why} ({})", strip_position(&message)), Some(&path))
        }
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::new(400, MALFORMED_JSON, format!("malformed JSON: {message}"), None)
        }
        Category::Data => {
            let parent = if path == "." { String::new() } else { path };
            // serde names unknown and missing fields in backquotes; the path stops at the
            // struct that holds them.
            let named = ["unknown field `", "missing field `", "duplicate field `"]
                .iter()
                .find_map(|prefix| message.strip_prefix(prefix))
                .and_then(|rest| rest.split('`').next());
            let field = match named {
                Some(name) if parent.is_empty() || parent.ends_with(name) => {
                    if parent.is_empty() { name.to_owned() } else { parent.clone() }
                }
                Some(name) => format!("{parent}.{name}"),
                None if parent.is_empty() => String::new(),
                None => parent,
            };
            let message = with_documented_range(&field, in_plain_words(&strip_position(&message)));
            if field.is_empty() {
                ApiError::new(400, INVALID, message, None)
            } else {
                ApiError::new(400, INVALID, format!("{field}: {message}"), Some(&field))
            }
        }
    }
}

/// serde's words for JSON's types in a decoding error ("expected u32", "invalid type: map")
/// in JSON's (an audit found the Rust type names unclear to a client).
fn in_plain_words(message: &str) -> String {
    const EXPECTED: [(&str, &str); 7] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number from 0 to 4294967295"),
        ("expected u64", "expected a whole number from 0 to 18446744073709551615"),
        ("expected usize", "expected a whole number from 0 to 18446744073709551615"),
        ("expected i32", "expected a whole number from -2147483648 to 2147483647"),
        ("expected i64", "expected a whole number from -9223372036854775808 to 9223372036854775807"),
    ];
    let mut plain = message.to_owned();
    for (serde, json) in EXPECTED {
        if let Some(head) = plain.strip_suffix(serde) {
            plain = format!("{head}{json}");
            break;
        }
    }
    for (serde, json) in [
        ("invalid type: map,", "invalid type: object,"),
        ("invalid type: sequence,", "invalid type: array,"),
        ("invalid type: unit value,", "invalid type: null,"),
        ("invalid type: floating point", "invalid type: number"),
    ] {
        if let Some(tail) = plain.strip_prefix(serde) {
            plain = format!("{json}{tail}");
        }
    }
    if let Some(head) = plain.strip_suffix("expected a sequence") {
        plain = format!("{head}expected an array");
    } else if let Some(head) = plain.strip_suffix("expected a map") {
        plain = format!("{head}expected an object");
    }
    plain
}

/// A field with a documented range says that range, not its integer type's ("priority:
/// invalid type: number `1.5`, expected a whole number from -9007199254740991 to
/// 9007199254740991", not the i64 range; found by the `/v1` fuzzing audit).
fn with_documented_range(field: &str, message: String) -> String {
    use rota_core::jobs::limits::{CONCURRENCY_MAX, LEASE_BATCH_MAX, MAX_ATTEMPTS_MAX, PRIORITY_MAX, PRIORITY_MIN};
    let name = field.rsplit('.').next().unwrap_or(field);
    let range = match name {
        "priority" => format!("from {PRIORITY_MIN} to {PRIORITY_MAX}"),
        "max" => format!("from 1 to {LEASE_BATCH_MAX}"),
        "max_attempts" => format!("from 1 to {MAX_ATTEMPTS_MAX}"),
        "concurrency" => format!("from 1 to {CONCURRENCY_MAX} (or null: no limit)"),
        "by" | "lease_token" => format!("from 1 to {}", u64::MAX),
        _ => return message,
    };
    match message.find("expected a whole number from ") {
        Some(at) => format!("{}expected a whole number {range}", &message[..at]),
        None => message,
    }
}

/// serde_json appends " at line L column C"; the field already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_errors_name_json_types_not_rust_ones() {
        let cases = [
            ("invalid type: string \"1\", expected u32", "invalid type: string \"1\", expected a whole number from 0 to 4294967295"),
            ("invalid type: map, expected a sequence", "invalid type: object, expected an array"),
            ("invalid type: floating point `1.8446744073709552e19`, expected u64", "invalid type: number `1.8446744073709552e19`, expected a whole number from 0 to 18446744073709551615"),
            ("invalid type: unit value, expected i64", "invalid type: null, expected a whole number from -9223372036854775808 to 9223372036854775807"),
            // A client's own string is left alone.
            ("invalid type: string \"map,\", expected a map", "invalid type: string \"map,\", expected an object"),
            ("unknown field `x`, expected one of `a`, `b`", "unknown field `x`, expected one of `a`, `b`"),
        ];
        for (serde, plain) in cases {
            assert_eq!(in_plain_words(serde), plain);
        }
    }

    #[test]
    fn an_unknown_outcome_is_504_without_retry_after_and_no_leader_is_503_with_it() {
        let unknown = ApiError::from_propose_error(&ProposeError::OutcomeUnknown("leader died".into()));
        assert_eq!((unknown.status, unknown.code.as_str()), (504, OUTCOME_UNKNOWN));
        assert!(unknown.message.contains("Idempotency-Key"), "{}", unknown.message);
        assert!(unknown.to_response().headers().get(RETRY_AFTER).is_none());

        let no_leader = ApiError::from_propose_error(&ProposeError::NoLeader).to_response();
        assert_eq!(no_leader.status(), 503);
        assert_eq!(no_leader.headers().get(RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
    }
}
