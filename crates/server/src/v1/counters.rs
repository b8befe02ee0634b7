//! `POST|GET|DELETE /v1/counters/{name}`. Concurrent increments are separate commands that the
//! proposer packs into one Raft entry; each gets its own new value back.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};
use rota_core::jobs::{JobCommand, JobResponse};
use serde::Deserialize;

use super::json;
use super::queues::unexpected;
use super::{propose_once, read_point, reply, ApiError, Call};
use crate::app::App;
use crate::backend::Backend;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrementBody {
    by: u64,
}

fn counter_body(name: &str, value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + name.len());
    out.extend_from_slice(b"{\"name\":");
    json::push_string(&mut out, name);
    out.extend_from_slice(format!(",\"value\":{value}}}\n").as_bytes());
    out
}

pub(crate) async fn increment<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    name: &str,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    json::parse_query(call.query.as_deref(), &[])?;
    json::check_name("name", name)?;
    let body = json::read_body(request, &app.body_budget).await?;
    let body: IncrementBody = json::decode(&body)?;
    json::check_range("by", body.by, 1, u64::MAX)?;
    propose_counter(app, call, JobCommand::IncrementCounter { name: name.to_owned(), by: body.by }).await
}

/// `DELETE /v1/counters/{name}`: answers the value the counter had (0 if it had none).
pub(crate) async fn delete<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    name: &str,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    json::parse_query(call.query.as_deref(), &[])?;
    json::read_no_fields(request, &app.body_budget).await?;
    json::check_name("name", name)?;
    propose_counter(app, call, JobCommand::DeleteCounter { name: name.to_owned() }).await
}

/// Proposes a counter command and answers `{"name", "value"}` from its outcome.
async fn propose_counter<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    command: JobCommand,
) -> Result<Response<Body>, ApiError> {
    let outcome = match propose_once(app, call, command).await {
        Ok(outcome) => outcome,
        Err(response) => return Ok(response),
    };
    match outcome.response {
        JobResponse::Counter { name, value } => Ok(reply(200, counter_body(&name, value), outcome.replayed)),
        other => Err(unexpected(&other)),
    }
}

pub(crate) async fn get<B: Backend>(app: &Arc<App<B>>, call: &Call<'_>, name: &str) -> Result<Response<Body>, ApiError> {
    let params = json::parse_query(call.query.as_deref(), &["consistency"])?;
    json::check_name("name", name)?;
    read_point(app, json::query_local(&params)?).await?;
    let value = app.backend.read(|state| state.jobs.counter(name)).unwrap_or(0);
    Ok(reply(200, counter_body(name, value), false))
}
