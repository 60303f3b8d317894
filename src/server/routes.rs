//! The HTTP API: OpenAI's `/v1/chat/completions`, `/v1/completions`, `/v1/models`, SGLang's
//! native `/generate` and `/get_model_info`, `/health` and Prometheus `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value as Json_};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::request::SampledLogprobs;
use crate::engine::{EngineEvent, FinishReason, GenerateRequest, RequestStream, SamplingParams, TokenOutput, Usage};
use crate::server::error::ApiError;
use crate::server::openai::{
    ChatCompletionRequest, CompletionRequest, GenerateBody, IdsOrIdLists, PromptSpec, TextOrTexts, MAX_CHOICES,
};
use crate::server::reasoning::ReasoningParser;
use crate::server::state::{unix_now, AppState};

/// The router with every endpoint, the body limit and JSON 404/405 fallbacks.
pub fn router(state: AppState) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/health_generate", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/metrics", get(metrics))
        .route("/get_model_info", get(model_info))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/generate", post(generate))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets in-flight responses finish (graceful drain).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").code("not_found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
}

async fn health(State(st): State<AppState>) -> Response {
    if st.engine.is_alive() && !st.engine.is_draining() {
        StatusCode::OK.into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine is not running").into_response()
    }
}

fn model_card(st: &AppState) -> Json_ {
    json!({
        "id": st.cfg.served_model_name,
        "object": "model",
        "created": st.created,
        "owned_by": "dsv3",
        "root": st.cfg.model_path,
        "max_model_len": st.engine.info().context_length,
    })
}

async fn list_models(State(st): State<AppState>) -> Json<Json_> {
    Json(json!({ "object": "list", "data": [model_card(&st)] }))
}

async fn get_model(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match st.check_model(Some(&id)) {
        Ok(()) => Json(model_card(&st)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model_info(State(st): State<AppState>) -> Json<Json_> {
    let i = st.engine.info();
    Json(json!({
        "model_path": st.cfg.model_path,
        "served_model_name": st.cfg.served_model_name,
        "is_generation": true,
        "device": i.device,
        "context_length": i.context_length,
        "vocab_size": i.vocab_size,
        "max_total_tokens": i.max_total_tokens,
        "page_size": i.page_size,
        "max_running_requests": i.max_running_requests,
        "chunked_prefill_size": i.step_token_budget,
        "prefix_caching": i.prefix_caching,
        "cuda_graph_max_bs": i.cuda_graph_max_bs,
        "dp_size": i.dp_ranks,
    }))
}

async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.engine.metrics().render_prometheus(&st.cfg.served_model_name);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// The body as JSON: 413 over the limit, 400 for malformed JSON, 422 for JSON of the wrong shape.
fn parse<T: DeserializeOwned>(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, format!("request body larger than {} bytes", st.cfg.max_body_bytes))
                .code("request_too_large")
        } else {
            ApiError::new(status, r.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid request: {e}")).code("invalid_request")
        }
        _ => ApiError::bad_request(format!("invalid JSON: {e}")).code("invalid_json"),
    })
}

/// Submits `n` copies of each prompt (seeds offset per copy); choice `i * n + j`.
fn submit_all(
    st: &AppState,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    n: usize,
    prompt_param: &str,
) -> Result<Vec<RequestStream>, ApiError> {
    if prompts.len() * n > MAX_CHOICES {
        return Err(ApiError::bad_request(format!("at most {MAX_CHOICES} prompts × n per request")).param("n"));
    }
    let mut out = Vec::with_capacity(prompts.len() * n);
    for p in prompts {
        for j in 0..n {
            let mut params = params.clone();
            if let Some(s) = params.seed {
                params.seed = Some(s.wrapping_add(j as u64));
            }
            let s = st.engine.submit(GenerateRequest { prompt: p.clone(), params }).map_err(|e| {
                let mut e = ApiError::from(e);
                if e.param.as_deref() == Some("messages") || e.param.as_deref() == Some("prompt") {
                    e.param = Some(prompt_param.to_string());
                }
                e
            })?;
            out.push(s);
        }
    }
    Ok(out)
}

type Tagged = (usize, EngineEvent);

/// Merges the choices' event streams. A forwarder stops (dropping its stream, which cancels the
/// request) as soon as the consumer is gone.
fn fan_in(streams: Vec<RequestStream>) -> UnboundedReceiver<Tagged> {
    let (tx, rx) = unbounded_channel();
    for (i, mut s) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = s.recv() => {
                        let ev = ev.unwrap_or_else(|| EngineEvent::Failed("the engine stopped".into()));
                        let last = !matches!(ev, EngineEvent::Token(_));
                        if tx.send((i, ev)).is_err() || last {
                            break;
                        }
                    }
                    _ = tx.closed() => break,
                }
            }
        });
    }
    rx
}

#[derive(Default)]
struct ChoiceOut {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<(u32, SampledLogprobs)>,
    finish: Option<FinishReason>,
    usage: Usage,
}

async fn collect_all(mut rx: UnboundedReceiver<Tagged>, count: usize) -> Result<Vec<ChoiceOut>, ApiError> {
    let mut out: Vec<ChoiceOut> = (0..count).map(|_| ChoiceOut::default()).collect();
    let mut left = count;
    while left > 0 {
        let Some((i, ev)) = rx.recv().await else {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine stopped"));
        };
        let c = &mut out[i];
        match ev {
            EngineEvent::Token(t) => {
                c.ids.push(t.token_id);
                c.text.push_str(&t.text);
                if let Some(lp) = t.logprobs {
                    c.logprobs.push((t.token_id, lp));
                }
            }
            EngineEvent::Finished { reason, text, usage } => {
                c.text.push_str(&text);
                c.finish = Some(reason);
                c.usage = usage;
                left -= 1;
            }
            EngineEvent::Failed(m) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)),
        }
    }
    Ok(out)
}

fn usage_json(prompt_tokens: usize, completion_tokens: usize, cached: usize) -> Json_ {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

/// Usage over the choices of a request, `n` per prompt: each distinct prompt counted once (its
/// `n` copies share it), every completion counted.
fn usage_over<'a>(usages: impl Iterator<Item = &'a Usage> + Clone, n: usize) -> Json_ {
    let prompt: usize = usages.clone().step_by(n.max(1)).map(|u| u.prompt_tokens).sum();
    let cached: usize = usages.clone().step_by(n.max(1)).map(|u| u.cached_tokens).sum();
    let completion: usize = usages.map(|u| u.completion_tokens).sum();
    usage_json(prompt, completion, cached)
}

fn total_usage(choices: &[ChoiceOut], n: usize) -> Json_ {
    usage_over(choices.iter().map(|c| &c.usage), n)
}

/// One SSE chunk of a streamed response: the OpenAI envelope around `choices` (and `usage`, in
/// the last chunk when the client asked for it).
fn stream_chunk(id: &str, object: &str, created: u64, model: &str, choices: Json_, usage: Option<Json_>) -> String {
    let mut chunk = json!({ "id": id, "object": object, "created": created, "model": model, "choices": choices });
    if let Some(u) = usage {
        chunk["usage"] = u;
    }
    chunk.to_string()
}

fn matched_stop(r: &FinishReason) -> Json_ {
    match r {
        FinishReason::StopToken(t) => json!(t),
        FinishReason::StopString(s) => json!(s),
        _ => Json_::Null,
    }
}

fn chat_logprobs(st: &AppState, items: &[(u32, SampledLogprobs)]) -> Json_ {
    let entry = |id: u32, lp: f32| {
        let tok = st.token_text(id);
        json!({ "token": tok, "logprob": lp, "bytes": tok.as_bytes() })
    };
    let content: Vec<Json_> = items
        .iter()
        .map(|(id, lp)| {
            let mut e = entry(*id, lp.logprob);
            e["top_logprobs"] = Json_::Array(lp.top.iter().map(|t| entry(t.token_id, t.logprob)).collect());
            e
        })
        .collect();
    json!({ "content": content })
}

fn completion_logprobs(st: &AppState, items: &[(u32, SampledLogprobs)], offset0: usize) -> Json_ {
    let mut offset = offset0;
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (id, lp) in items {
        let tok = st.token_text(*id);
        offsets.push(offset);
        offset += tok.len();
        tokens.push(tok);
        lps.push(lp.logprob);
        let top: serde_json::Map<String, Json_> =
            lp.top.iter().map(|t| (st.token_text(t.token_id), json!(t.logprob))).collect();
        tops.push(Json_::Object(top));
    }
    json!({ "tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets })
}

fn request_id(prefix: &str, streams: &[RequestStream]) -> String {
    format!("{prefix}-{:x}{:06x}", unix_now(), streams.first().map_or(0, |s| s.id))
}

// ---------------------------------------------------------------- chat completions

async fn chat_completions(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match chat_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(st: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: ChatCompletionRequest = parse(&st, body)?;
    st.check_model(req.model.as_deref())?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").param("messages"));
    }
    let params = req.params()?;
    let n = req.sampling.choices()?;
    let template = st
        .template
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("this model has no tokenizer, so no chat template: use /v1/completions with token ids"))?;
    let msgs = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| m.to_template_value(i))
        .collect::<Result<Vec<_>, _>>()?;
    let kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    let text = template
        .render(&msgs, req.tools.as_ref(), true, &kwargs)
        .map_err(|e| ApiError::bad_request(e.to_string()).param("messages"))?;
    let prompt = st.encode_raw(&text)?;
    let streams = submit_all(&st, &[prompt], &params, n, "messages")?;
    let id = request_id("chatcmpl", &streams);
    let created = unix_now();
    let parser = if req.separate_reasoning.unwrap_or(true) { st.cfg.reasoning_parser } else { None };
    let rx = fan_in(streams);
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let fmt = ChatStream {
            st: st.clone(),
            id,
            created,
            parsers: (0..n).map(|_| parser.map(ReasoningParser::new)).collect(),
            include_usage,
            usage: vec![Usage::default(); n],
            logprobs: params.logprobs,
        };
        return Ok(sse(rx, n, fmt));
    }
    let choices = collect_all(rx, n).await?;
    let usage = total_usage(&choices, n);
    let out: Vec<Json_> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut message = json!({ "role": "assistant" });
            match parser {
                Some(kind) => {
                    let (r, content) = ReasoningParser::split(kind, &c.text);
                    message["reasoning_content"] = if r.is_empty() { Json_::Null } else { json!(r) };
                    message["content"] = json!(content);
                }
                None => message["content"] = json!(c.text),
            }
            let reason = c.finish.clone().unwrap_or(FinishReason::Abort);
            json!({
                "index": i,
                "message": message,
                "logprobs": if params.logprobs { chat_logprobs(&st, &c.logprobs) } else { Json_::Null },
                "finish_reason": reason.openai(),
                "matched_stop": matched_stop(&reason),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": st.cfg.served_model_name,
        "choices": out,
        "usage": usage,
    }))
    .into_response())
}

struct ChatStream {
    st: AppState,
    id: String,
    created: u64,
    parsers: Vec<Option<ReasoningParser>>,
    include_usage: bool,
    usage: Vec<Usage>,
    logprobs: bool,
}

impl ChatStream {
    fn chunk(&self, index: usize, delta: Json_, logprobs: Json_, finish: Option<&FinishReason>) -> String {
        let mut choice = json!({
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish.map(|f| f.openai()),
        });
        if let Some(f) = finish {
            choice["matched_stop"] = matched_stop(f);
        }
        stream_chunk(&self.id, "chat.completion.chunk", self.created, &self.st.cfg.served_model_name, json!([choice]), None)
    }

    fn text_delta(&mut self, index: usize, text: &str, finishing: bool) -> Option<Json_> {
        let (reasoning, content) = match &mut self.parsers[index] {
            Some(p) => {
                let (mut r, mut c) = p.push(text);
                if finishing {
                    let (r2, c2) = p.finish();
                    r.push_str(&r2);
                    c.push_str(&c2);
                }
                (r, c)
            }
            None => (String::new(), text.to_string()),
        };
        let mut delta = serde_json::Map::new();
        if !reasoning.is_empty() {
            delta.insert("reasoning_content".into(), json!(reasoning));
        }
        if !content.is_empty() {
            delta.insert("content".into(), json!(content));
        }
        (!delta.is_empty()).then_some(Json_::Object(delta))
    }
}

/// Turns engine events into SSE `data:` payloads.
trait StreamFormat: Send + 'static {
    fn start(&mut self, _choices: usize, _out: &mut Vec<String>) {}
    fn token(&mut self, index: usize, t: &TokenOutput, out: &mut Vec<String>);
    fn finish(&mut self, index: usize, reason: &FinishReason, text: &str, usage: &Usage, out: &mut Vec<String>);
    fn end(&mut self, _out: &mut Vec<String>) {}
}

impl StreamFormat for ChatStream {
    fn start(&mut self, choices: usize, out: &mut Vec<String>) {
        for i in 0..choices {
            out.push(self.chunk(i, json!({ "role": "assistant", "content": "" }), Json_::Null, None));
        }
    }

    fn token(&mut self, index: usize, t: &TokenOutput, out: &mut Vec<String>) {
        let delta = self.text_delta(index, &t.text, false);
        let lp = match (&t.logprobs, self.logprobs) {
            (Some(lp), true) => chat_logprobs(&self.st, &[(t.token_id, lp.clone())]),
            _ => Json_::Null,
        };
        if delta.is_some() || !lp.is_null() {
            out.push(self.chunk(index, delta.unwrap_or_else(|| json!({})), lp, None));
        }
    }

    fn finish(&mut self, index: usize, reason: &FinishReason, text: &str, usage: &Usage, out: &mut Vec<String>) {
        if let Some(delta) = self.text_delta(index, text, true) {
            out.push(self.chunk(index, delta, Json_::Null, None));
        }
        out.push(self.chunk(index, json!({}), Json_::Null, Some(reason)));
        self.usage[index] = usage.clone();
    }

    fn end(&mut self, out: &mut Vec<String>) {
        if self.include_usage {
            // Every choice of a chat request shares its one prompt.
            let usage = usage_over(self.usage.iter(), self.usage.len());
            let model = &self.st.cfg.served_model_name;
            out.push(stream_chunk(&self.id, "chat.completion.chunk", self.created, model, json!([]), Some(usage)));
        }
    }
}

struct SseState<F> {
    rx: UnboundedReceiver<Tagged>,
    remaining: usize,
    choices: usize,
    fmt: F,
    started: bool,
    done: bool,
}

/// An SSE response: the formatter's payloads, then `data: [DONE]`. An engine failure becomes
/// an `{"error": ...}` payload before `[DONE]`.
fn sse<F: StreamFormat>(rx: UnboundedReceiver<Tagged>, choices: usize, fmt: F) -> Response {
    let st = SseState { rx, remaining: choices, choices, fmt, started: false, done: false };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out = Vec::new();
        if !st.started {
            st.started = true;
            st.fmt.start(st.choices, &mut out);
            if !out.is_empty() {
                return Some((out, st));
            }
        }
        loop {
            match st.rx.recv().await {
                Some((i, EngineEvent::Token(t))) => {
                    st.fmt.token(i, &t, &mut out);
                    if !out.is_empty() {
                        break;
                    }
                }
                Some((i, EngineEvent::Finished { reason, text, usage })) => {
                    st.fmt.finish(i, &reason, &text, &usage, &mut out);
                    st.remaining -= 1;
                    if st.remaining == 0 {
                        st.fmt.end(&mut out);
                        out.push("[DONE]".to_string());
                        st.done = true;
                    }
                    break;
                }
                Some((_, EngineEvent::Failed(m))) => {
                    out.push(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m).body().to_string());
                    out.push("[DONE]".to_string());
                    st.done = true;
                    break;
                }
                None => {
                    out.push(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine stopped").body().to_string());
                    out.push("[DONE]".to_string());
                    st.done = true;
                    break;
                }
            }
        }
        Some((out, st))
    })
    .flat_map(|v| futures_util::stream::iter(v.into_iter().map(|d| Ok::<Event, Infallible>(Event::default().data(d)))));
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

// ---------------------------------------------------------------- completions

async fn completions(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match completions_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(st: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&st, body)?;
    st.check_model(req.model.as_deref())?;
    let params = req.params()?;
    let n = req.sampling.choices()?;
    // (ids, text) per prompt.
    let prompts: Vec<(Vec<u32>, Option<String>)> = match &req.prompt {
        PromptSpec::Text(t) => vec![(st.encode(t)?, Some(t.clone()))],
        PromptSpec::Texts(ts) => ts.iter().map(|t| Ok((st.encode(t)?, Some(t.clone())))).collect::<Result<_, ApiError>>()?,
        PromptSpec::Ids(ids) => vec![(ids.clone(), None)],
        PromptSpec::IdLists(l) => l.iter().map(|ids| (ids.clone(), None)).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request("prompt must not be empty").param("prompt"));
    }
    let echo_texts: Vec<String> = prompts
        .iter()
        .map(|(ids, t)| if req.echo { t.clone().unwrap_or_else(|| st.decode(ids, true)) } else { String::new() })
        .collect();
    let ids: Vec<Vec<u32>> = prompts.into_iter().map(|(i, _)| i).collect();
    let streams = submit_all(&st, &ids, &params, n, "prompt")?;
    let total = streams.len();
    let id = request_id("cmpl", &streams);
    let created = unix_now();
    let rx = fan_in(streams);
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let fmt = CompletionStream {
            st: st.clone(),
            id,
            created,
            echo: (0..total).map(|i| echo_texts[i / n].clone()).collect(),
            include_usage,
            usage: vec![Usage::default(); total],
            n,
            offsets: vec![0; total],
        };
        return Ok(sse(rx, total, fmt));
    }
    let choices = collect_all(rx, total).await?;
    let usage = total_usage(&choices, n);
    let out: Vec<Json_> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let echo = &echo_texts[i / n];
            let reason = c.finish.clone().unwrap_or(FinishReason::Abort);
            json!({
                "index": i,
                "text": format!("{echo}{}", c.text),
                "logprobs": if params.logprobs { completion_logprobs(&st, &c.logprobs, echo.len()) } else { Json_::Null },
                "finish_reason": reason.openai(),
                "matched_stop": matched_stop(&reason),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": st.cfg.served_model_name,
        "choices": out,
        "usage": usage,
    }))
    .into_response())
}

struct CompletionStream {
    st: AppState,
    id: String,
    created: u64,
    echo: Vec<String>,
    include_usage: bool,
    usage: Vec<Usage>,
    n: usize,
    offsets: Vec<usize>,
}

impl CompletionStream {
    fn chunk(&self, index: usize, text: &str, logprobs: Json_, finish: Option<&FinishReason>) -> String {
        let mut choice = json!({
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish.map(|f| f.openai()),
        });
        if let Some(f) = finish {
            choice["matched_stop"] = matched_stop(f);
        }
        stream_chunk(&self.id, "text_completion", self.created, &self.st.cfg.served_model_name, json!([choice]), None)
    }
}

impl StreamFormat for CompletionStream {
    fn start(&mut self, choices: usize, out: &mut Vec<String>) {
        for i in 0..choices {
            if !self.echo[i].is_empty() {
                out.push(self.chunk(i, &self.echo[i], Json_::Null, None));
                self.offsets[i] = self.echo[i].len();
            }
        }
    }

    fn token(&mut self, index: usize, t: &TokenOutput, out: &mut Vec<String>) {
        let lp = match &t.logprobs {
            Some(lp) => completion_logprobs(&self.st, &[(t.token_id, lp.clone())], self.offsets[index]),
            None => Json_::Null,
        };
        if !t.text.is_empty() || !lp.is_null() {
            out.push(self.chunk(index, &t.text, lp, None));
        }
        self.offsets[index] += t.text.len();
    }

    fn finish(&mut self, index: usize, reason: &FinishReason, text: &str, usage: &Usage, out: &mut Vec<String>) {
        out.push(self.chunk(index, text, Json_::Null, Some(reason)));
        self.usage[index] = usage.clone();
    }

    fn end(&mut self, out: &mut Vec<String>) {
        if self.include_usage {
            let usage = usage_over(self.usage.iter(), self.n);
            let model = &self.st.cfg.served_model_name;
            out.push(stream_chunk(&self.id, "text_completion", self.created, model, json!([]), Some(usage)));
        }
    }
}

// ---------------------------------------------------------------- native /generate

async fn generate(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match generate_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn native_finish(r: &FinishReason, completion: usize) -> Json_ {
    match r {
        FinishReason::StopToken(t) => json!({ "type": "stop", "matched": t }),
        FinishReason::StopString(s) => json!({ "type": "stop", "matched": s }),
        FinishReason::Length => json!({ "type": "length", "length": completion }),
        FinishReason::Abort => json!({ "type": "abort" }),
    }
}

async fn generate_inner(st: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: GenerateBody = parse(&st, body)?;
    let mut params = req.sampling_params.to_params()?;
    let n = match req.sampling_params.n.unwrap_or(1) {
        0 => return Err(ApiError::bad_request("n must be at least 1").param("sampling_params.n")),
        n => n,
    };
    if req.return_logprob {
        params.logprobs = true;
        params.top_logprobs = req.top_logprobs_num.unwrap_or(0);
    }
    let (prompts, batch): (Vec<Vec<u32>>, bool) = match (&req.text, &req.input_ids) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give either text or input_ids, not both")),
        (Some(TextOrTexts::One(t)), None) => (vec![st.encode(t)?], false),
        (Some(TextOrTexts::Many(ts)), None) => (ts.iter().map(|t| st.encode(t)).collect::<Result<_, _>>()?, true),
        (None, Some(IdsOrIdLists::One(ids))) => (vec![ids.clone()], false),
        (None, Some(IdsOrIdLists::Many(l))) => (l.clone(), true),
        (None, None) => return Err(ApiError::bad_request("give text or input_ids").param("text")),
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request("the batch is empty").param("text"));
    }
    let batch = batch || n > 1;
    let streams = submit_all(&st, &prompts, &params, n, "text")?;
    let total = streams.len();
    let ids: Vec<u64> = streams.iter().map(|s| s.id).collect();
    let rx = fan_in(streams);
    let started = Instant::now();
    if req.stream {
        let fmt = NativeStream {
            st: st.clone(),
            ids,
            started,
            batch,
            texts: vec![String::new(); total],
            outputs: vec![Vec::new(); total],
            prompt_lens: (0..total).map(|i| prompts[i / n].len()).collect(),
        };
        return Ok(sse(rx, total, fmt));
    }
    let choices = collect_all(rx, total).await?;
    let latency = started.elapsed().as_secs_f64();
    let items: Vec<Json_> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let reason = c.finish.clone().unwrap_or(FinishReason::Abort);
            let mut meta = json!({
                "id": ids[i].to_string(),
                "finish_reason": native_finish(&reason, c.usage.completion_tokens),
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
                "cached_tokens": c.usage.cached_tokens,
                "e2e_latency": latency,
            });
            if params.logprobs {
                meta["output_token_logprobs"] = json!(c
                    .logprobs
                    .iter()
                    .map(|(id, lp)| json!([lp.logprob, id, Json_::Null]))
                    .collect::<Vec<_>>());
                meta["output_top_logprobs"] = json!(c
                    .logprobs
                    .iter()
                    .map(|(_, lp)| lp.top.iter().map(|t| json!([t.logprob, t.token_id, Json_::Null])).collect::<Vec<_>>())
                    .collect::<Vec<_>>());
            }
            json!({ "text": c.text, "output_ids": c.ids, "meta_info": meta })
        })
        .collect();
    let body = if batch { Json_::Array(items) } else { items.into_iter().next().unwrap_or(Json_::Null) };
    Ok(Json(body).into_response())
}

/// SGLang streams the cumulative text and ids of a request in every chunk.
struct NativeStream {
    st: AppState,
    ids: Vec<u64>,
    started: Instant,
    batch: bool,
    texts: Vec<String>,
    outputs: Vec<Vec<u32>>,
    prompt_lens: Vec<usize>,
}

impl NativeStream {
    fn chunk(&self, index: usize, finish: Json_, usage: Option<&Usage>) -> String {
        let completion = self.outputs[index].len();
        let mut v = json!({
            "text": self.texts[index],
            "output_ids": self.outputs[index],
            "meta_info": {
                "id": self.ids[index].to_string(),
                "finish_reason": finish,
                "prompt_tokens": self.prompt_lens[index],
                "completion_tokens": completion,
                "cached_tokens": usage.map_or(0, |u| u.cached_tokens),
                "e2e_latency": self.started.elapsed().as_secs_f64(),
            },
        });
        if self.batch {
            v["index"] = json!(index);
        }
        let _ = &self.st;
        v.to_string()
    }
}

impl StreamFormat for NativeStream {
    fn token(&mut self, index: usize, t: &TokenOutput, out: &mut Vec<String>) {
        self.outputs[index].push(t.token_id);
        self.texts[index].push_str(&t.text);
        out.push(self.chunk(index, Json_::Null, None));
    }

    fn finish(&mut self, index: usize, reason: &FinishReason, text: &str, usage: &Usage, out: &mut Vec<String>) {
        self.texts[index].push_str(text);
        out.push(self.chunk(index, native_finish(reason, usage.completion_tokens), Some(usage)));
    }
}
