//! Routes, request parsing and limits. Every error is JSON:
//! `{"error": {"code", "message", "field"?}}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use super::batch::{Job, Queue};
use super::metrics::Metrics;
use super::model::{Info, Input, Refusal};

/// Request limits.
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    pub max_inputs: usize,
    pub max_text_chars: usize,
    pub timeout: Duration,
}

/// One served bundle.
pub struct Served {
    pub info: Info,
    pub queue: Arc<Queue>,
}

pub struct App {
    pub models: Vec<Served>,
    pub metrics: Arc<Metrics>,
    /// sha256 of the API key, when one is required.
    pub key_sha: Option<String>,
    pub limits: Limits,
    pub budget: headstart::features::Budget,
}

/// An error answer.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None, retry_after: None }
    }
    fn field(mut self, f: impl Into<String>) -> ApiError {
        self.field = Some(f.into());
        self
    }
    fn bad(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message).field(field)
    }
    fn too_large(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message).field(field)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            e["field"] = Value::String(f);
        }
        let mut r = (self.status, Json(json!({ "error": e }))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

pub fn router(app: Arc<App>) -> Router {
    let guarded = Router::new()
        .route("/v1/predict", post(predict))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .merge(guarded)
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(app.limits.max_body))
        .layer(middleware::from_fn_with_state(app.clone(), record))
        .with_state(app)
}

/// Counts every request by route and status, and times it.
async fn record(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let t = Instant::now();
    let r = next.run(req).await;
    app.metrics.request(&route, r.status().as_u16(), t.elapsed().as_secs_f64());
    r
}

/// Bearer-token check, in constant time over the tokens' hashes.
async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    if let Some(want) = &app.key_sha {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        let got = headstart::features::sha256_hex(given.trim().as_bytes());
        if given.is_empty() || !bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid `Authorization: Bearer <key>` header is required").into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let waiting: Vec<&str> = app.models.iter().filter(|m| !m.queue.is_warm()).map(|m| m.info.name.as_str()).collect();
    if waiting.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading", "waiting": waiting}))).into_response()
    }
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let list: Vec<Value> = app.models.iter().map(|m| json!(m.info)).collect();
    Json(json!({ "models": list }))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}

/// A request's raw content, before it is checked against the model.
enum Raw {
    Json(Value),
    Bytes(Vec<u8>),
}

struct Parsed {
    model: Option<String>,
    top_k: Option<usize>,
    inputs: Vec<Raw>,
}

async fn predict(State(app): State<Arc<App>>, req: Request) -> Response {
    let limit = app.limits.timeout;
    match tokio::time::timeout(limit, handle(app, req)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", format!("no answer within the {} ms request timeout", limit.as_millis())).into_response()
        }
    }
}

async fn handle(app: Arc<App>, req: Request) -> Result<Value, ApiError> {
    let parsed = parse(&app, req).await?;
    let served = pick(&app, parsed.model.as_deref())?;
    let top_k = parsed.top_k.unwrap_or(5);
    if parsed.inputs.is_empty() {
        return Err(ApiError::bad("inputs", "`inputs` is empty"));
    }
    if parsed.inputs.len() > app.limits.max_inputs {
        return Err(ApiError::too_large("inputs", format!("{} inputs, over the limit of {} per request", parsed.inputs.len(), app.limits.max_inputs)));
    }
    let prepared = {
        let app2 = app.clone();
        let idx = app.models.iter().position(|m| std::ptr::eq(m, served)).expect("served model is in the list");
        tokio::task::spawn_blocking(move || prepare_all(&app2, &app2.models[idx].info, parsed.inputs))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??
    };
    // A request larger than a batch is split into batch-sized parts, queued together.
    let (mut jobs, mut replies) = (vec![], vec![]);
    let mut rest = prepared;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(served.queue.max_batch()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        jobs.push(Job { inputs: std::mem::replace(&mut rest, tail), top_k, reply: tx });
        replies.push(rx);
    }
    if served.queue.push(jobs).is_err() {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", format!("the queue of {} is full; retry shortly", served.info.name));
        e.retry_after = Some(1);
        return Err(e);
    }
    let mut tops = vec![];
    for rx in replies {
        let part = rx.await.map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the model worker stopped"))?;
        tops.extend(part.map_err(|m| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", m))?);
    }
    let preds: Vec<Value> = tops.into_iter().map(|t| json!({ "top": t })).collect();
    Ok(json!({"model": served.info.name, "predictions": preds}))
}

fn pick<'a>(app: &'a App, name: Option<&str>) -> Result<&'a Served, ApiError> {
    match name {
        Some(n) => app.models.iter().find(|m| m.info.name == n).ok_or_else(|| {
            let names: Vec<&str> = app.models.iter().map(|m| m.info.name.as_str()).collect();
            ApiError::new(StatusCode::NOT_FOUND, "unknown_model", format!("no model named {n:?}; served: {}", names.join(", "))).field("model")
        }),
        None if app.models.len() == 1 => Ok(&app.models[0]),
        None => Err(ApiError::bad("model", "several models are served: name one with `model`")),
    }
}

/// Reads a JSON body or a multipart form, within the body limit.
async fn parse(app: &App, req: Request) -> Result<Parsed, ApiError> {
    let multipart = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("multipart/form-data"));
    let query_model = req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("model="))).map(str::to_string);
    let mut p = if multipart { parse_multipart(app, req).await? } else { parse_json(app, req.into_body()).await? };
    if p.model.is_none() {
        p.model = query_model;
    }
    Ok(p)
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::too_large("body", format!("the request body is over the {limit}-byte limit"))
}

async fn parse_json(app: &App, body: Body) -> Result<Parsed, ApiError> {
    let bytes = axum::body::to_bytes(body, app.limits.max_body).await.map_err(|_| body_too_large(app.limits.max_body))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::bad("body", format!("the body is not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| ApiError::bad("body", "the body must be a JSON object with `inputs`"))?;
    let model = match obj.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad("model", "`model` must be a string")),
    };
    let top_k = match obj.get("top_k") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|&k| k >= 1).ok_or_else(|| ApiError::bad("top_k", "`top_k` must be a positive integer"))? as usize),
    };
    let inputs = match obj.get("inputs") {
        Some(Value::Array(a)) => a.iter().cloned().map(Raw::Json).collect(),
        Some(_) => return Err(ApiError::bad("inputs", "`inputs` must be an array")),
        None => return Err(ApiError::bad("inputs", "`inputs` is missing")),
    };
    Ok(Parsed { model, top_k, inputs })
}

async fn parse_multipart(app: &App, req: Request) -> Result<Parsed, ApiError> {
    let mut form = axum::extract::Multipart::from_request(req, &()).await.map_err(|e| ApiError::bad("body", e.body_text()))?;
    let mut p = Parsed { model: None, top_k: None, inputs: vec![] };
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(body_too_large(app.limits.max_body)),
            Err(e) => return Err(ApiError::bad("body", format!("malformed multipart form: {}", e.body_text()))),
        };
        let name = field.name().unwrap_or("").to_string();
        let data = match field.bytes().await {
            Ok(d) => d,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(body_too_large(app.limits.max_body)),
            Err(e) => return Err(ApiError::bad(name, format!("malformed multipart field: {}", e.body_text()))),
        };
        match name.as_str() {
            "model" => p.model = Some(String::from_utf8(data.to_vec()).map_err(|_| ApiError::bad("model", "`model` is not UTF-8"))?),
            "top_k" => {
                let k = std::str::from_utf8(&data).ok().and_then(|s| s.trim().parse::<usize>().ok()).filter(|&k| k >= 1);
                p.top_k = Some(k.ok_or_else(|| ApiError::bad("top_k", "`top_k` must be a positive integer"))?);
            }
            _ => p.inputs.push(Raw::Bytes(data.to_vec())),
        }
    }
    Ok(p)
}

/// Checks and prepares every input (decoding images and audio), naming the first bad one.
fn prepare_all(app: &App, info: &Info, inputs: Vec<Raw>) -> Result<Vec<Input>, ApiError> {
    inputs.into_iter().enumerate().map(|(i, raw)| prepare(app, info, raw, &format!("inputs[{i}]"))).collect()
}

fn prepare(app: &App, info: &Info, raw: Raw, field: &str) -> Result<Input, ApiError> {
    if info.modality == "text" {
        return prepare_text(app, info, raw, field);
    }
    let bytes = match raw {
        Raw::Bytes(b) => b,
        Raw::Json(Value::String(s)) => {
            let b64 = s.split_once(";base64,").map_or(s.as_str(), |(_, d)| d);
            base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| ApiError::bad(field, format!("not valid base64: {e}")))?
        }
        Raw::Json(_) => return Err(ApiError::bad(field, format!("an {} input is a base64 string", info.modality))),
    };
    let prepared = if info.modality == "audio" { info.prepare_audio(bytes, field) } else { info.prepare_image(&bytes, &app.budget) };
    prepared.map_err(|r| match r {
        Refusal::TooLarge(m) => ApiError::too_large(field, m),
        Refusal::Invalid(m) => ApiError::bad(field, m),
    })
}

fn prepare_text(app: &App, info: &Info, raw: Raw, field: &str) -> Result<Input, ApiError> {
    let (text, pair) = match raw {
        Raw::Json(Value::String(s)) => (s, None),
        Raw::Json(Value::Object(o)) => {
            let get = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
            (get("text").ok_or_else(|| ApiError::bad(format!("{field}.text"), "a string `text` is required"))?, get("pair"))
        }
        Raw::Json(_) => return Err(ApiError::bad(field, "a text input is a string or {\"text\", \"pair\"}")),
        Raw::Bytes(b) => (String::from_utf8(b).map_err(|_| ApiError::bad(field, "the uploaded text is not valid UTF-8"))?, None),
    };
    if info.pairs && pair.is_none() {
        return Err(ApiError::bad(format!("{field}.pair"), "this model classifies sentence pairs: give {\"text\", \"pair\"}"));
    }
    for (t, f) in [(Some(&text), field.to_string()), (pair.as_ref(), format!("{field}.pair"))] {
        let Some(t) = t else { continue };
        let n = t.chars().count();
        if n > app.limits.max_text_chars {
            return Err(ApiError::too_large(f, format!("{n} characters, over the limit of {}", app.limits.max_text_chars)));
        }
        if t.trim().is_empty() {
            return Err(ApiError::bad(f, "empty text"));
        }
    }
    Ok(Input::Text { text, pair: if info.pairs { pair } else { None } })
}
