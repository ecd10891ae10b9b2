//! The routes: `/ws` for agents, `/api/...` for tests and people (JSON over HTTP).

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::net::Peer;
use crate::{Error, MockDashboard, conn, lock};

/// All routes of the dashboard.
pub(crate) fn router(dash: MockDashboard) -> Router {
    Router::new()
        .route("/ws", get(ws))
        .route("/api/hosts", get(hosts))
        .route("/api/hosts/{host}/command", post(command))
        .route("/api/hosts/{host}/frame", post(frame))
        .route("/api/hosts/{host}/pause", post(pause))
        .route("/api/hosts/{host}/resume", post(resume))
        .route("/api/hosts/{host}/disconnect", post(disconnect))
        .route("/api/hosts/{host}/frames", get(frames))
        .route("/api/violations", get(violations))
        .route("/api/events", get(events))
        .route("/api/tokens", post(tokens))
        .route("/api/dispatch", post(dispatch))
        .route("/api/hosts/{host}/kill", post(kill))
        .route("/api/ops", get(ops))
        .route("/api/remote", post(remote))
        .with_state(dash)
}

/// The token of an `Authorization: Bearer <token>` header: exactly that
/// prefix, the rest verbatim (upstream `handlers.go` `handleWebSocket`:
/// `strings.HasPrefix(authHeader, "Bearer ")`).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").filter(|t| !t.is_empty())
}

async fn ws(
    State(dash): State<MockDashboard>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let inner = dash.inner();
    let refusal = match bearer(&headers) {
        None => Some("missing bearer token"),
        Some(t) if !lock(&inner.tokens).contains(t) => Some("unknown token"),
        Some(_) => None,
    };
    if let Some(reason) = refusal {
        tracing::info!("{peer}: upgrade refused with 401: {reason}");
        lock(&inner.state).push_event("rejected", None, Some(401), Some(reason.to_owned()));
        inner.wake();
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "authentication failed\n",
        )
            .into_response();
    }
    match upgrade {
        Ok(upgrade) => upgrade
            // hub.go maxMessageSize: a larger message drops the connection
            .max_message_size(crate::MAX_MESSAGE)
            .max_frame_size(crate::MAX_MESSAGE)
            .on_failed_upgrade(move |e| tracing::warn!("{peer}: upgrade failed: {e}"))
            .on_upgrade(move |socket| conn::run(dash, socket, peer)),
        Err(rejection) => rejection.into_response(),
    }
}

fn answer(result: Result<(), Error>, ok: Value) -> Response {
    match result {
        Ok(()) => Json(ok).into_response(),
        Err(e @ Error::NotConnected(_)) => {
            (StatusCode::NOT_FOUND, Json(json!({"error": e.to_string()}))).into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

async fn hosts(State(dash): State<MockDashboard>) -> Response {
    Json(dash.hosts()).into_response()
}

/// `{"command": "pull"}`; the body is read as JSON whatever its content type,
/// so that a plain `curl -d` works.
async fn command(
    State(dash): State<MockDashboard>,
    Path(host): Path<String>,
    body: Bytes,
) -> Response {
    let command = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("command").and_then(Value::as_str) {
            Some(c) => c.to_owned(),
            None => return bad_request("the body must be {\"command\": \"<name>\"}".to_owned()),
        },
        Err(e) => return bad_request(format!("the body is not JSON: {e}")),
    };
    answer(
        dash.send_command(&host, &command).await,
        json!({"sent": true}),
    )
}

async fn frame(
    State(dash): State<MockDashboard>,
    Path(host): Path<String>,
    body: String,
) -> Response {
    tracing::info!("{host}: sending a raw frame");
    answer(dash.send_text(&host, &body).await, json!({"sent": true}))
}

async fn pause(State(dash): State<MockDashboard>, Path(host): Path<String>) -> Response {
    answer(dash.try_pause(&host, true), json!({"paused": true}))
}

async fn resume(State(dash): State<MockDashboard>, Path(host): Path<String>) -> Response {
    answer(dash.try_pause(&host, false), json!({"paused": false}))
}

#[derive(Deserialize)]
struct DisconnectQuery {
    code: Option<u16>,
}

async fn disconnect(
    State(dash): State<MockDashboard>,
    Path(host): Path<String>,
    Query(q): Query<DisconnectQuery>,
) -> Response {
    let code = q.code.unwrap_or(1000);
    answer(
        dash.try_disconnect(&host, code).await,
        json!({"closed": true, "code": code}),
    )
}

#[derive(Deserialize)]
struct FramesQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    after: Option<u64>,
}

async fn frames(
    State(dash): State<MockDashboard>,
    Path(host): Path<String>,
    Query(q): Query<FramesQuery>,
) -> Response {
    let inner = dash.inner();
    let frames = lock(&inner.state).frames(&host, q.kind.as_deref(), q.after.unwrap_or(0));
    let list: Vec<Value> = frames
        .into_iter()
        .map(|f| {
            let ms = f
                .received
                .saturating_duration_since(inner.started)
                .as_millis();
            json!({"seq": f.seq, "type": f.kind, "payload": f.payload, "received_ms": ms})
        })
        .collect();
    Json(list).into_response()
}

#[derive(Deserialize)]
struct AfterQuery {
    after: Option<u64>,
}

async fn violations(State(dash): State<MockDashboard>, Query(q): Query<AfterQuery>) -> Response {
    let after = q.after.unwrap_or(0);
    let list: Vec<_> = lock(&dash.inner().state)
        .violations
        .iter()
        .filter(|v| v.seq > after)
        .cloned()
        .collect();
    Json(list).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    host: Option<String>,
    after: Option<u64>,
}

async fn events(State(dash): State<MockDashboard>, Query(q): Query<EventsQuery>) -> Response {
    let after = q.after.unwrap_or(0);
    let list: Vec<_> = lock(&dash.inner().state)
        .events
        .iter()
        .filter(|e| e.seq > after && q.host.as_ref().is_none_or(|h| e.host.as_ref() == Some(h)))
        .cloned()
        .collect();
    Json(list).into_response()
}

async fn tokens(State(dash): State<MockDashboard>, body: Bytes) -> Response {
    let token = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("token").and_then(Value::as_str).map(str::trim) {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => return bad_request("the body must be {\"token\": \"<token>\"}".to_owned()),
        },
        Err(e) => return bad_request(format!("the body is not JSON: {e}")),
    };
    dash.add_token(&token);
    Json(json!({"added": true})).into_response()
}

/// `{"op": "pull", "hosts": ["h"], "force": false}`, as upstream's
/// `handleDispatchOp`; answers `{"status", "results": [...]}`.
async fn dispatch(State(dash): State<MockDashboard>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Req {
        op: String,
        hosts: Vec<String>,
        #[serde(default)]
        force: bool,
    }
    let req: Req = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "the body must be {{\"op\", \"hosts\": [...], \"force\"}}: {e}"
            ));
        }
    };
    if !crate::lifecycle::AGENT_OPS.contains(&req.op.as_str()) {
        return bad_request(format!("unknown op: {}", req.op));
    }
    let results: Vec<_> = req
        .hosts
        .iter()
        .map(|h| dash.dispatch(h, &req.op, req.force))
        .collect();
    let ok = results.iter().filter(|r| r.status == "EXECUTING").count();
    let status = match (ok, results.len() - ok) {
        (_, 0) => "success",
        (0, _) => "failed",
        _ => "partial",
    };
    Json(json!({"status": status, "results": results})).into_response()
}

async fn kill(State(dash): State<MockDashboard>, Path(host): Path<String>) -> Response {
    match dash.kill(&host) {
        Ok(()) => Json(json!({"status": "sent", "signal": "SIGTERM"})).into_response(),
        Err(e) => (StatusCode::CONFLICT, Json(json!({"error": e}))).into_response(),
    }
}

#[derive(Deserialize)]
struct OpsQuery {
    host: Option<String>,
}

async fn ops(State(dash): State<MockDashboard>, Query(q): Query<OpsQuery>) -> Response {
    Json(dash.ops(q.host.as_deref())).into_response()
}

/// `{"commit": "...", "lock_hash": "..."}` sets the desired state; `null` clears it.
async fn remote(State(dash): State<MockDashboard>, body: Bytes) -> Response {
    match serde_json::from_slice::<Option<crate::Remote>>(&body) {
        Ok(r) => {
            dash.set_remote(r);
            Json(json!({"set": true})).into_response()
        }
        Err(e) => bad_request(format!(
            "the body must be {{\"commit\", \"lock_hash\"}} or null: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        // upstream takes exactly "Bearer " and the rest as it is
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer(&h), None);
    }
}
