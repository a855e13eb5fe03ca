//! The HTTP ingest gateway of `keylink stream` (SPEC §11): source `{ "http": { "listen": ADDR } }`.
//!
//! - `POST /events`: one JSON object, or many as JSON Lines (`Content-Type:
//!   application/x-ndjson`). The answer comes only once every accepted event is acknowledged by
//!   every output topic (and its key is durable in the key store, which the transform ensures
//!   before it returns): `200 {"accepted": n, "rejected": [{"index": i, "reason": "…",
//!   "detail": "…"}]}` — reasons and details name fields, never values. `400` for a body that is
//!   not JSON (or not UTF-8), `413` over `max_body_bytes`, `503` when an output did not
//!   acknowledge within `ack_timeout` (nothing counts as accepted; a retry is safe: the same
//!   event gives byte-identical messages).
//! - `GET /healthz`: `200` when every output answers, else `503`.
//! - `GET /metrics`: Prometheus text (events accepted, rejected by reason, ack latency).
//!
//! On SIGINT/SIGTERM the listener closes and requests in flight are answered before exit.
//!
//! It lives in the CLI (feature `http`), not in a connector crate: it is a front end of the
//! engine, like the CLI itself — each request needs the whole pipeline's acknowledgement, which
//! the message-source trait (poll, then commit) does not model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keylink_core::stream_job::PreparedStream;

struct Gateway {
    stream: Arc<PreparedStream>,
    ack_timeout: Duration,
}

/// Serves the gateway on `listen` until `stop` resolves, then drains requests in flight.
pub(crate) async fn serve(
    stream: Arc<PreparedStream>,
    listen: &str,
    max_body_bytes: usize,
    ack_timeout: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    announce: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    announce(listener.local_addr()?);
    let state = Arc::new(Gateway {
        stream,
        ack_timeout,
    });
    let app = Router::new()
        .route("/events", post(events))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("the HTTP gateway failed")
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string() + "\n",
    )
        .into_response()
}

async fn events(State(g): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.starts_with("application/x-ndjson") || v.starts_with("application/jsonl")
        });
    let events: Vec<Bytes> = if ndjson {
        if std::str::from_utf8(&body).is_err() {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "the body is not UTF-8"}),
            );
        }
        let lines: Vec<Bytes> = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| body.slice_ref(l.strip_suffix(b"\r").unwrap_or(l)))
            .collect();
        // a body none of whose lines is JSON is not JSON Lines at all
        if !lines
            .iter()
            .any(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok())
        {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "the body is not JSON Lines: no line is JSON"}),
            );
        }
        lines
    } else {
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "the body is not JSON (send one JSON object, or \
                                   JSON Lines with Content-Type: application/x-ndjson)"}),
            );
        }
        vec![body]
    };
    let t = match g.stream.transform(&events).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "a request failed in the transform (key store)");
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "the key store is unavailable; nothing was accepted"}),
            );
        }
    };
    match tokio::time::timeout(g.ack_timeout, g.stream.deliver(&t)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "an output refused a request's events");
            return unavailable();
        }
        Err(_) => {
            tracing::warn!(timeout = ?g.ack_timeout, "an output did not acknowledge in time");
            return unavailable();
        }
    }
    g.stream
        .stats
        .record(t.accepted, &t.rejects, started.elapsed());
    let rejected: Vec<serde_json::Value> = t
        .rejects
        .iter()
        .map(|r| serde_json::json!({"index": r.index, "reason": r.reason.as_str(), "detail": r.detail}))
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({"accepted": t.accepted, "rejected": rejected}),
    )
}

fn unavailable() -> Response {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": "an output is unavailable; nothing was accepted (retrying is \
                           safe: the same events give byte-identical messages)"}),
    )
}

async fn healthz(State(g): State<Arc<Gateway>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(5), g.stream.check_outputs()).await {
        Ok(Ok(())) => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        _ => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unavailable"}),
        ),
    }
}

async fn metrics(State(g): State<Arc<Gateway>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        g.stream.stats.prometheus(),
    )
        .into_response()
}
