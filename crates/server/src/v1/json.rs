//! The `/v1` wire format: reading and strictly decoding request bodies, the duration and
//! time types of requests, the query string, and the hand-written renderers of jobs and
//! queues.
//!
//! Decoding is strict: every body struct denies unknown fields, types are exact (a duration
//! is a string, a count an unsigned integer), and the first fault is reported with the
//! path of the value at fault. Payloads and results stay JSON text from the request bytes
//! to the state and back ([`RawValue`]), so they are never parsed into a tree and
//! re-serialized on the hot path. Rendering writes into one buffer per response.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::CONTENT_LENGTH;
use axum::http::Request;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use rota_core::jobs::{Job, LeaseBlockReason, LeaseBlocked, Nullable, QueueConfig, QueueInfo};
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::value::RawValue;

use super::errors::{self, ApiError};
use super::limits::{BODY_BYTES_MAX, OVERSIZE_BODY_DRAIN_BYTES_MAX};
use crate::body_budget::{BodyBudget, BodyReservation};
use crate::limits::BODY_READ_TIMEOUT;

// ---- reading ----

/// A request body with its share of the node-wide body budget, given back when this drops
/// (so keep it for as long as the bytes, or what was decoded from them, are needed).
pub(crate) struct ReadBody {
    bytes: Bytes,
    _reservation: BodyReservation,
}

impl std::ops::Deref for ReadBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// An empty body, or `{}` (`retry` and the DELETEs take no fields): anything else is
/// refused, so that a field sent where it has no effect is not silently dropped.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// Reads a body that must hold no fields ([`NoFields`]).
pub(crate) async fn read_no_fields(request: Request<Body>, budget: &Arc<BodyBudget>) -> Result<(), ApiError> {
    let body = read_body(request, budget).await?;
    decode::<NoFields>(&body).map(|_| ())
}

/// The whole body, bounded in size ([`BODY_BYTES_MAX`], 413 before reading when
/// `Content-Length` says so), in time ([`BODY_READ_TIMEOUT`], 408) and by the node-wide
/// `budget` (503 `unavailable` with `Retry-After`, before reading when `Content-Length`
/// says so, or as soon as a chunked body outgrows what is left).
pub(crate) async fn read_body(request: Request<Body>, budget: &Arc<BodyBudget>) -> Result<ReadBody, ApiError> {
    // At the connection bound, a connection waiting long for a body is closed.
    let _waiting = crate::body_wait::reading_body(&request);
    let too_large = || ApiError::too_large(None, format!("the request body is over {BODY_BYTES_MAX} bytes"));
    let over_budget = || {
        ApiError::new(
            503,
            errors::UNAVAILABLE,
            format!(
                "request bodies being read use the node's {} byte budget; retry shortly",
                budget.bytes_max()
            ),
            None,
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|bytes| bytes > BODY_BYTES_MAX as u64) {
        crate::app::drain(request.into_body(), OVERSIZE_BODY_DRAIN_BYTES_MAX).await;
        return Err(too_large());
    }
    // Under the body limit now, so the cast is exact.
    let declared_bytes = declared.unwrap_or(0) as usize;
    let mut reservation = budget.reservation();
    if !reservation.cover(declared_bytes) {
        return Err(over_budget());
    }
    let read = async {
        let mut stream = request.into_body().into_data_stream();
        let mut body = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| ApiError::new(400, errors::INVALID, "the body could not be read", None))?;
            if body.len() + chunk.len() > BODY_BYTES_MAX {
                // The rest is read and dropped too (see OVERSIZE_BODY_DRAIN_BYTES_MAX).
                let read_bytes = (body.len() + chunk.len()) as u64;
                drop(body);
                crate::app::drain_stream(&mut stream, read_bytes, OVERSIZE_BODY_DRAIN_BYTES_MAX).await;
                return Err(too_large());
            }
            // A chunked body: reserve what it has grown to before keeping it.
            if !reservation.cover(body.len() + chunk.len()) {
                return Err(over_budget());
            }
            if body.is_empty() && declared == Some(chunk.len() as u64) {
                // The whole body in one chunk, the common case: no copy.
                return Ok(ReadBody { bytes: chunk, _reservation: reservation });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(ReadBody { bytes: body.freeze(), _reservation: reservation })
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            408,
            errors::TIMEOUT,
            format!("the body took longer than {BODY_READ_TIMEOUT:?}"),
            None,
        )),
    }
}

/// Decodes a body strictly. An empty body reads as `{}` (every field left out), so
/// `curl -X POST` works for requests whose fields are all optional.
pub(crate) fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    // serde's structs also accept arrays (fields by position); a body is an object.
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<de::IgnoredAny>(body) {
            Ok(_) => ApiError::new(400, errors::INVALID, "the body must be a JSON object", None),
            Err(error) if looks_form_encoded(body) => ApiError::new(
                400,
                errors::MALFORMED_JSON,
                format!(
                    "malformed JSON: {error} (the body looks form-encoded, name=value&...: /v1 takes a JSON object, \
                     as in curl -d '{{\"payload\": 1}}')"
                ),
                None,
            ),
            Err(error) => ApiError::new(400, errors::MALFORMED_JSON, format!("malformed JSON: {error}"), None),
        });
    }
    // The fast path decodes plainly; only a body that fails is decoded again with path
    // tracking (which copies every key it passes) to name the field at fault.
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    if let Ok(value) = T::deserialize(&mut deserializer) {
        deserializer
            .end()
            .map_err(|error| ApiError::new(400, errors::MALFORMED_JSON, format!("malformed JSON: {error}"), None))?;
        return Ok(value);
    }
    // JSON is UTF-8 text: other bytes in a string read to serde as "invalid unicode code
    // point", which was then reported as a lone surrogate escape.
    if let Err(error) = std::str::from_utf8(body) {
        return Err(ApiError::new(
            400,
            errors::MALFORMED_JSON,
            format!("malformed JSON: the body is not UTF-8 (a byte that is not at offset {})", error.valid_up_to()),
            None,
        ));
    }
    // A body that is not JSON at all is malformed wherever the typed decode stopped first
    // (`{"a":` would otherwise be reported as the unknown field `a`).
    if let Err(error) = serde_json::from_slice::<de::IgnoredAny>(body) {
        return Err(ApiError::new(400, errors::MALFORMED_JSON, format!("malformed JSON: {error}"), None));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Err(error) => Err(errors::from_json_error(error)),
        // Cannot happen (the same input failed above); answered as malformed all the same.
        Ok(_) => Err(ApiError::new(400, errors::MALFORMED_JSON, "malformed JSON", None)),
    }
}

/// `name=value` pairs joined by `&` (what `curl -d name=value` and HTML forms send).
fn looks_form_encoded(body: &[u8]) -> bool {
    let text = body.trim_ascii();
    !text.is_empty()
        && text.split(|&byte| byte == b'&').all(|pair| {
            pair.iter().position(|&byte| byte == b'=').is_some_and(|at| at > 0)
                && pair.iter().all(|&byte| byte.is_ascii_graphic() && byte != b'{' && byte != b'"')
        })
}

/// The `Idempotency-Key` header, if any: 1 to [`crate::limits::IDEMPOTENCY_KEY_BYTES_MAX`] visible ASCII
/// characters, else 400.
pub(crate) fn idempotency_key(request: &Request<Body>) -> Result<Option<String>, ApiError> {
    crate::respond::idempotency_key(request.headers()).map_err(|cause| ApiError::invalid("Idempotency-Key", cause))
}

// ---- request value types ----

/// A duration given as a humantime string (`"500ms"`, `"30s"`, `"1h30m"`), in whole
/// milliseconds (saturating, so an absurd value fails its field's range check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DurationMs(pub u64);

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationMs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration string such as \"30s\", \"500ms\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<DurationMs, E> {
                parse_duration_ms(text).map(DurationMs).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// A humantime duration (`"500ms"`, `"30s"`, `"1h30m"`) in whole milliseconds (saturating,
/// so an absurd value fails its field's range check); the same rules in a body and a query.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|error| {
        format!("invalid duration {text:?} ({error}): write durations like \"500ms\", \"30s\", \"1h30m\"")
    })?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("invalid duration {text:?}: give whole milliseconds"));
    }
    Ok(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// An RFC 3339 time with `Z` or an offset (`"2026-11-23T19:05:00.123Z"`,
/// `"2026-11-23T20:05:00+01:00"`) as Unix milliseconds; a time without either is refused
/// (see [`rota_core::jobs::parse_rfc3339_ms`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeMs(pub u64);

impl<'de> Deserialize<'de> for TimeMs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeVisitor;
        impl Visitor<'_> for TimeVisitor {
            type Value = TimeMs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(rota_core::jobs::RFC3339_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<TimeMs, E> {
                rota_core::jobs::parse_rfc3339_ms(text)
                    .map(TimeMs)
                    .map_err(|error| E::custom(format_args!("invalid time {text:?}: {error}")))
            }
        }
        deserializer.deserialize_str(TimeVisitor)
    }
}

/// For a field that JSON `null` turns off (`"concurrency": null`): left out is `None`
/// (with `#[serde(default)]`), `null` is `Some(Nullable::Null)`.
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Nullable<T>>, D::Error> {
    Ok(Some(match Option::<T>::deserialize(deserializer)? {
        None => Nullable::Null,
        Some(value) => Nullable::Value(value),
    }))
}

/// For a field of a `PATCH` that takes no `null`: left out is `None` (with
/// `#[serde(default)]`, the current value kept), `null` is refused, naming the field.
pub(crate) fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    match Option::<T>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(de::Error::custom("null only turns off concurrency or rate; leave a field out to keep its value")),
    }
}

/// A nested object of a request body: like `T`, but only a JSON object will do (serde's
/// derived structs would also take an array of the fields by position).
#[derive(Debug)]
pub(crate) struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: de::MapAccess<'de>>(self, map: M) -> Result<Object<T>, M::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// A borrowed JSON value, kept as text.
pub(crate) type Raw<'a> = &'a RawValue;

/// A payload or result as stored: valid JSON text without the whitespace between tokens,
/// so the same value sent with different spacing is the same request (idempotency
/// fingerprints) and takes no bytes for indentation. JSON that the server would accept as
/// text but common decoders cannot read back is refused first (nesting deeper than
/// [`JSON_DEPTH_MAX`], numbers beyond a double's range such as `1e400`, lone UTF-16
/// surrogates such as `"\ud800"`): stored, such a job would break every client that lists
/// or leases it. One pass over the bytes with one allocation (the copy the command needs
/// anyway, made by [`rota_core::jobs::compact_json`], which clients share for the depth),
/// then a decode for numbers and escapes.
///
/// [`JSON_DEPTH_MAX`]: super::limits::JSON_DEPTH_MAX
pub(crate) fn portable(field: &str, json: &str) -> Result<String, ApiError> {
    let compact = rota_core::jobs::compact_json(json).map_err(|too_deep| ApiError::invalid(field, format!("{field} {too_deep}")))?;
    if let Err(error) = serde_json::from_str::<serde_json::Value>(json) {
        let message = error.to_string();
        let why = rota_core::jobs::unreadable_json_reason(&message).unwrap_or("JSON that decoders cannot read back");
        return Err(ApiError::invalid(field, format!("{field} holds {why}: {message}")));
    }
    Ok(compact)
}

// ---- rendering ----

/// Appends `text` as a JSON string.
pub(crate) fn push_string(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    use std::io::Write as _;
    let _ = write!(out, "{value}");
}

fn push_i64(out: &mut Vec<u8>, value: i64) {
    use std::io::Write as _;
    let _ = write!(out, "{value}");
}

/// `"2026-11-23T19:05:00.123Z"`.
pub(crate) fn push_time(out: &mut Vec<u8>, unix_ms: u64) {
    use std::io::Write as _;
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let _ = write!(out, "\"{}\"", humantime::format_rfc3339_millis(time));
}

fn push_optional_time(out: &mut Vec<u8>, unix_ms: Option<u64>) {
    match unix_ms {
        Some(unix_ms) => push_time(out, unix_ms),
        None => out.extend_from_slice(b"null"),
    }
}

/// A duration as hours, minutes, seconds and milliseconds (`"168h"`, `"1h30m"`, `"500ms"`,
/// `"0s"`): what humantime parses back, without its days and months.
pub(crate) use rota_core::jobs::format_duration_ms;

fn push_duration(out: &mut Vec<u8>, ms: u64) {
    out.push(b'"');
    out.extend_from_slice(format_duration_ms(ms).as_bytes());
    out.push(b'"');
}

/// The job object of docs/api-v1.md. `payload` and `result` are the stored JSON text.
pub(crate) fn push_job(out: &mut Vec<u8>, job: &Job) {
    out.extend_from_slice(b"{\"id\":");
    push_u64(out, job.id);
    out.extend_from_slice(b",\"queue\":");
    push_string(out, &job.queue);
    out.extend_from_slice(b",\"state\":\"");
    out.extend_from_slice(job.state.as_str().as_bytes());
    out.extend_from_slice(b"\",\"priority\":");
    push_i64(out, job.priority);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(job.payload.as_bytes());
    out.extend_from_slice(b",\"attempts\":");
    push_u64(out, u64::from(job.attempts));
    out.extend_from_slice(b",\"max_attempts\":");
    push_u64(out, u64::from(job.max_attempts));
    out.extend_from_slice(b",\"created_at\":");
    push_time(out, job.created_at_ms);
    out.extend_from_slice(b",\"run_at\":");
    push_time(out, job.run_at_ms);
    out.extend_from_slice(b",\"result\":");
    match &job.result {
        Some(result) => out.extend_from_slice(result.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"errors\":[");
    for (index, error) in job.errors.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"attempt\":");
        push_u64(out, u64::from(error.attempt));
        out.extend_from_slice(b",\"at\":");
        push_time(out, error.at_ms);
        out.extend_from_slice(b",\"error\":");
        push_string(out, &error.message);
        out.push(b'}');
    }
    out.push(b']');
    if let Some(lease) = &job.lease {
        out.extend_from_slice(b",\"worker\":");
        push_string(out, &lease.worker);
        out.extend_from_slice(b",\"lease_token\":");
        push_u64(out, lease.lease_token);
        out.extend_from_slice(b",\"lease_expires_at\":");
        push_time(out, lease.lease_expires_at_ms);
    }
    out.extend_from_slice(b",\"finished_at\":");
    push_optional_time(out, job.finished_at_ms);
    out.extend_from_slice(b",\"purge_at\":");
    push_optional_time(out, job.purge_at_ms);
    out.push(b'}');
}

/// A payload is usually small; this leaves room for the rest of the object.
fn job_capacity(job: &Job) -> usize {
    256 + job.payload.len() + job.result.as_ref().map_or(0, String::len) + job.errors.len() * 96
}

pub(crate) fn job_body(job: &Job) -> Vec<u8> {
    let mut out = Vec::with_capacity(job_capacity(job) + 1);
    push_job(&mut out, job);
    out.push(b'\n');
    out
}

/// `{"job": {...}, "jobs": [...], "blocked": ...}`: a complete with `lease_next`.
pub(crate) fn completed_and_leased_body(job: &Job, jobs: &[Job], blocked: Option<&LeaseBlocked>) -> Vec<u8> {
    let mut out = Vec::with_capacity(job_capacity(job) + 8);
    out.extend_from_slice(b"{\"job\":");
    push_job(&mut out, job);
    out.push(b',');
    let lease = lease_body(jobs, blocked);
    out.extend_from_slice(&lease[1..]);
    out
}

/// A lease's answer: `{"jobs": [...]}`, and when it leased fewer than asked, why and when
/// asking again may help: `"blocked": {"reason": "paused" | "empty" | "concurrency" |
/// "rate", "retry_at": time | null}`.
pub(crate) fn lease_body(jobs: &[Job], blocked: Option<&LeaseBlocked>) -> Vec<u8> {
    let mut out = jobs_body(jobs, None);
    if let Some(blocked) = blocked {
        out.truncate(out.len() - 2); // "}\n"
        out.extend_from_slice(b",\"blocked\":{\"reason\":");
        let reason = match blocked.reason {
            LeaseBlockReason::Paused => "paused",
            LeaseBlockReason::Empty => "empty",
            LeaseBlockReason::Concurrency => "concurrency",
            LeaseBlockReason::Rate => "rate",
        };
        push_string(&mut out, reason);
        out.extend_from_slice(b",\"retry_at\":");
        match blocked.retry_at_ms {
            Some(at_ms) => push_time(&mut out, at_ms),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}}\n");
    }
    out
}

/// `{"jobs": [...]}` plus any extra members (`"next"`), already rendered.
pub(crate) fn jobs_body(jobs: &[Job], extra: Option<(&str, Option<u64>)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + jobs.iter().map(job_capacity).sum::<usize>());
    out.extend_from_slice(b"{\"jobs\":[");
    for (index, job) in jobs.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        push_job(&mut out, job);
    }
    out.push(b']');
    if let Some((name, value)) = extra {
        out.push(b',');
        push_string(&mut out, name);
        out.push(b':');
        match value {
            Some(value) => push_u64(&mut out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}\n");
    out
}

fn push_config(out: &mut Vec<u8>, config: &QueueConfig) {
    out.extend_from_slice(b"{\"concurrency\":");
    match config.concurrency {
        Some(concurrency) => push_u64(out, u64::from(concurrency)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"rate\":");
    match &config.rate {
        Some(rate) => {
            out.extend_from_slice(b"{\"limit\":");
            push_u64(out, rate.limit);
            out.extend_from_slice(b",\"per\":");
            push_duration(out, rate.per_ms);
            out.extend_from_slice(b",\"burst\":");
            push_u64(out, rate.burst);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"lease_ttl\":");
    push_duration(out, config.lease_ttl_ms);
    out.extend_from_slice(b",\"max_attempts\":");
    push_u64(out, u64::from(config.max_attempts));
    out.extend_from_slice(b",\"backoff\":{\"base\":");
    push_duration(out, config.backoff.base_ms);
    out.extend_from_slice(b",\"max\":");
    push_duration(out, config.backoff.max_ms);
    out.extend_from_slice(b"},\"retention\":");
    push_duration(out, config.retention_ms);
    out.extend_from_slice(b",\"paused\":");
    out.extend_from_slice(if config.paused { b"true" } else { b"false" });
    out.push(b'}');
}

/// The queue object of docs/api-v1.md.
pub(crate) fn push_queue(out: &mut Vec<u8>, queue: &QueueInfo) {
    out.extend_from_slice(b"{\"name\":");
    push_string(out, &queue.name);
    out.extend_from_slice(b",\"config\":");
    push_config(out, &queue.config);
    let counts = &queue.counts;
    out.extend_from_slice(b",\"counts\":{");
    let pairs = [
        ("queued", counts.queued),
        ("scheduled", counts.scheduled),
        ("leased", counts.leased),
        ("succeeded", counts.succeeded),
        ("dead", counts.dead),
        ("cancelled", counts.cancelled),
    ];
    for (index, (name, count)) in pairs.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        push_string(out, name);
        out.push(b':');
        push_u64(out, count);
    }
    out.extend_from_slice(b"},\"rate_tokens\":");
    match queue.rate_tokens {
        Some(tokens) => push_u64(out, tokens),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"leases_held\":");
    push_u64(out, queue.leases_held);
    out.push(b'}');
}

pub(crate) fn queue_body(queue: &QueueInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(384);
    push_queue(&mut out, queue);
    out.push(b'\n');
    out
}

// ---- query strings ----

/// The query string's parameters, percent-decoded, each allowed name at most once;
/// unknown names are refused like unknown body fields.
pub(crate) fn parse_query<'a>(query: Option<&str>, allowed: &[&'a str]) -> Result<Vec<(&'a str, String)>, ApiError> {
    let mut params: Vec<(&'a str, String)> = Vec::new();
    let Some(query) = query else { return Ok(params) };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8().map(|text| text.into_owned())
        };
        let name = decode(name).map_err(|_| ApiError::invalid(name, "the query is not valid UTF-8"))?;
        let value = decode(value).map_err(|_| ApiError::invalid(&name, "the query is not valid UTF-8"))?;
        let Some(&known) = allowed.iter().find(|known| **known == name) else {
            return Err(ApiError::invalid(&name, format!("unknown query parameter {name:?}")));
        };
        if params.iter().any(|(seen, _)| *seen == known) {
            return Err(ApiError::invalid(known, format!("query parameter {known:?} given twice")));
        }
        params.push((known, value));
    }
    Ok(params)
}

pub(crate) fn query_value<'q>(params: &'q [(&str, String)], name: &str) -> Option<&'q str> {
    params.iter().find(|(known, _)| *known == name).map(|(_, value)| value.as_str())
}

/// A humantime duration from the query (`wait=30s`), at most `max_ms`.
pub(crate) fn query_duration_ms(params: &[(&str, String)], name: &str, max_ms: u64) -> Result<Option<u64>, ApiError> {
    let Some(text) = query_value(params, name) else { return Ok(None) };
    let ms = parse_duration_ms(text).map_err(|error| ApiError::invalid(name, format!("{name}: {error}")))?;
    check_range_ms(name, ms, 0, max_ms)?;
    Ok(Some(ms))
}

pub(crate) fn query_bool(params: &[(&str, String)], name: &str) -> Result<bool, ApiError> {
    match query_value(params, name) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(ApiError::invalid(name, format!("{name} must be true or false, got {other:?}"))),
    }
}

pub(crate) fn query_u64(params: &[(&str, String)], name: &str) -> Result<Option<u64>, ApiError> {
    query_value(params, name)
        .map(|text| text.parse::<u64>().map_err(|_| ApiError::invalid(name, format!("{name} must be a non-negative integer, got {text:?}"))))
        .transpose()
}

/// `consistency=local` skips the ReadIndex round; the default is linearizable.
pub(crate) fn query_local(params: &[(&str, String)]) -> Result<bool, ApiError> {
    match query_value(params, "consistency") {
        None | Some("linearizable") => Ok(false),
        Some("local") => Ok(true),
        Some(other) => Err(ApiError::invalid(
            "consistency",
            format!("consistency must be linearizable or local, got {other:?}"),
        )),
    }
}

// ---- ranges ----

/// A duration field within `[min_ms, max_ms]`, or 400 naming it (in the units it was given).
pub(crate) fn check_range_ms(field: &str, ms: u64, min_ms: u64, max_ms: u64) -> Result<(), ApiError> {
    if ms < min_ms || ms > max_ms {
        return Err(ApiError::invalid(
            field,
            format!(
                "{field} must be between {} and {}, got {}",
                format_duration_ms(min_ms),
                rota_core::jobs::format_limit_ms(max_ms),
                format_duration_ms(ms)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), ApiError> {
    if value < min || value > max {
        return Err(ApiError::invalid(field, format!("{field} must be between {min} and {max}, got {value}")));
    }
    Ok(())
}

/// Queue and counter names (the rule of `rota_core::jobs`, checked here too so a read of a
/// bad name is a 400 rather than a 404).
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    rota_core::jobs::check_name(field, name).map_err(|error| ApiError::from_job_error(&error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_json_drops_whitespace_between_tokens_only() {
        let minify = |json: &str| portable("payload", json).expect("portable");
        assert_eq!(minify(" { \"a b\" : [ 1 , \"x \\\" y\" ] }\n"), "{\"a b\":[1,\"x \\\" y\"]}");
        assert_eq!(minify("\"\\\\\" "), "\"\\\\\"");
    }

    #[test]
    fn durations_render_in_hours_minutes_seconds_and_parse_back() {
        for (ms, text) in [(0, "0s"), (500, "500ms"), (30_000, "30s"), (5_400_000, "1h30m"), (604_800_000, "168h")] {
            assert_eq!(format_duration_ms(ms), text);
            assert_eq!(humantime::parse_duration(text).expect("parses").as_millis() as u64, ms);
        }
        // Bounds in messages also say whole days in days.
        assert_eq!(rota_core::jobs::format_limit_ms(90 * 86_400_000), "2160h (90 days)");
        assert_eq!(rota_core::jobs::format_limit_ms(86_400_000), "24h");
        assert_eq!(rota_core::jobs::format_limit_ms(90_000), "1m30s");
    }

    #[test]
    fn times_render_as_rfc3339_with_milliseconds() {
        let mut out = Vec::new();
        push_time(&mut out, 1_700_000_000_123);
        assert_eq!(String::from_utf8(out).expect("utf8"), "\"2023-11-14T22:13:20.123Z\"");
    }
}
