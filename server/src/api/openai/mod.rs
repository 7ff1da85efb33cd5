//! The OpenAI-compatible API: `POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models`. `model` is
//! an adapter id or the base model's name; chat messages are rendered with the model's chat template.

mod types;

pub use types::*;

use super::error::{ApiError, ErrorKind, Flavor, OpenAiError};
use super::extract::OpenAiJson;
use super::generation::engine;
use super::generation::{self, AdapterLabel};
use super::params::{self, SamplingInput, Wire};
use super::sse;
use crate::AppState;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::{AdapterId, ChatMessage, EngineHandle, Event, FinishReason, GenerateRequest, Prompt};
use futures_util::StreamExt;
use std::convert::Infallible;

/// Default `max_tokens` of `/v1/completions` (OpenAI's).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;
/// Highest temperature OpenAI accepts.
pub const MAX_TEMPERATURE: f32 = 2.0;

/// Which route a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Chat,
    Text,
}

/// A checked request.
#[derive(Debug)]
struct Checked {
    route: Route,
    prepared: engine::Prepared,
    model: String,
    echo: Option<String>,
    stream: bool,
    include_usage: bool,
    /// Answer with each token's log-probability (and its `top_logprobs` most likely alternatives).
    logprobs: bool,
}

/// Most alternatives of OpenAI's completions `logprobs` (chat's `top_logprobs` goes to the engine's 20).
pub const MAX_COMPLETION_LOGPROBS: i64 = 5;

/// Whether to return log-probabilities, and how many alternatives: chat's `logprobs: true` with `top_logprobs`,
/// completions' `logprobs: <n>`.
fn logprobs(r: &Request, route: Route) -> Result<(bool, usize), ApiError> {
    let top = |n: i64, field: &str, max: i64| {
        if (0..=max).contains(&n) {
            Ok(n as usize)
        } else {
            Err(ApiError::invalid(field, format!("must be between 0 and {max}, got {n}")))
        }
    };
    match route {
        Route::Chat => {
            let on = match &r.logprobs {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(other) => return Err(ApiError::invalid("logprobs", format!("must be a boolean, got {other}"))),
            };
            match r.top_logprobs {
                Some(n) if !on && n > 0 => Err(ApiError::invalid("top_logprobs", "needs `logprobs` set to true")),
                Some(n) => Ok((on, top(n, "top_logprobs", engine::request::MAX_TOP_LOGPROBS as i64)?)),
                None => Ok((on, 0)),
            }
        }
        Route::Text => match &r.logprobs {
            None | Some(serde_json::Value::Null) => Ok((false, 0)),
            Some(serde_json::Value::Number(n)) if n.as_i64().is_some() => {
                Ok((true, top(n.as_i64().unwrap_or(-1), "logprobs", MAX_COMPLETION_LOGPROBS)?))
            }
            Some(other) => Err(ApiError::invalid("logprobs", format!("must be an integer, got {other}"))),
        },
    }
}

/// OpenAI's `logprobs` of `tokens`: chat's `{"content": [{token, logprob, bytes, top_logprobs}]}`, or completions'
/// `{tokens, token_logprobs, top_logprobs, text_offset}` with offsets counted from `offset` (bytes of text before
/// these tokens in the choice's text).
fn logprobs_json(
    engine: &EngineHandle,
    route: Route,
    tokens: &[engine::TokenEvent],
    offset: usize,
) -> serde_json::Value {
    use serde_json::json;
    // A log-probability as its shortest f32 decimal (as the LoRAX route writes it), not the f64 widening's digits.
    let lp = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::from(x));
    let text = |id: u32| engine.tokenizer().decode(&[id], false).unwrap_or_default();
    match route {
        Route::Chat => {
            let entry = |id: u32, logprob: f32| {
                let token = text(id);
                json!({"token": token, "logprob": lp(logprob), "bytes": token.as_bytes()})
            };
            let content: Vec<serde_json::Value> = tokens
                .iter()
                .map(|t| {
                    let mut e = entry(t.id, t.logprob);
                    e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                    e
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Route::Text => {
            let mut at = offset;
            let mut offsets = Vec::with_capacity(tokens.len());
            for t in tokens {
                offsets.push(at);
                at += t.text.len();
            }
            let top: Vec<serde_json::Value> = tokens
                .iter()
                .map(|t| {
                    // As OpenAI: the chosen token is always among them.
                    let mut alternatives = serde_json::Map::new();
                    for &(id, logprob) in t.top.iter().chain([(t.id, t.logprob)].iter()) {
                        alternatives.insert(text(id), json!(lp(logprob)));
                    }
                    serde_json::Value::Object(alternatives)
                })
                .collect();
            json!({
                "tokens": tokens.iter().map(|t| text(t.id)).collect::<Vec<_>>(),
                "token_logprobs": tokens.iter().map(|t| lp(t.logprob)).collect::<Vec<_>>(),
                "top_logprobs": top,
                "text_offset": offsets,
            })
        }
    }
}

fn refuse_unsupported(r: &Request, route: Route) -> Result<(), ApiError> {
    let wrong_route: &[(&str, bool)] = match route {
        Route::Chat => &[("prompt", r.prompt.is_some()), ("echo", r.echo.is_some()), ("suffix", r.suffix.is_some())],
        Route::Text => &[("messages", r.messages.is_some()), ("tools", r.tools.is_some())],
    };
    if let Some((field, _)) = wrong_route.iter().find(|(_, set)| *set) {
        let other = if route == Route::Chat { "/v1/completions" } else { "/v1/chat/completions" };
        return Err(ApiError::invalid(field, format!("belongs to {other}, not this route")));
    }
    let unsupported = [
        ("tools", r.tools.is_some(), "tool calls"),
        ("tool_choice", r.tool_choice.is_some(), "tool calls"),
        ("suffix", r.suffix.is_some(), "insertion (suffix)"),
        ("best_of", r.best_of.is_some_and(|n| n > 1), "best-of-n"),
    ];
    match unsupported.into_iter().find(|(_, on, _)| *on) {
        Some((field, _, what)) => Err(ApiError::unsupported(field, what)),
        None => Ok(()),
    }
}

/// OpenAI's `logit_bias`, `{"<token id>": bias}`, as the engine's list; its ranges and ids are the engine's to check.
fn logit_bias(value: Option<&serde_json::Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match value {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Object(map)) => map,
        Some(_) => return Err(ApiError::invalid("logit_bias", "must be an object of token ids to biases")),
    };
    map.iter()
        .map(|(key, bias)| {
            let token = key
                .parse::<u32>()
                .map_err(|_| ApiError::invalid("logit_bias", format!("keys must be token ids, got {key:?}")))?;
            let bias = bias.as_f64().ok_or_else(|| {
                ApiError::invalid("logit_bias", format!("token {token}'s bias must be a number, got {bias}"))
            })?;
            Ok((token, bias as f32))
        })
        .collect()
}

/// The adapter named by `model`: `None` for the base model's name. Whether the catalog has it is the engine's to
/// check; its "unknown adapter" is answered here in OpenAI's words.
fn model_adapter(engine: &EngineHandle, model: &str) -> Result<Option<AdapterId>, ApiError> {
    if model.is_empty() {
        return Err(ApiError::invalid("model", "must name the base model or an adapter (see GET /v1/models)"));
    }
    if model == engine.model_info().name {
        return Ok(None);
    }
    let id = AdapterId::new(model)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("`model`: {e}")).with_param("model"))?;
    Ok(Some(id))
}

/// OpenAI's words for the engine's "unknown adapter".
fn unknown_model(e: ApiError, model: &str) -> ApiError {
    match e.kind {
        ErrorKind::NotFound => {
            ApiError::new(ErrorKind::NotFound, format!("the model `{model}` does not exist (see GET /v1/models)"))
                .with_param("model")
        }
        _ => e,
    }
}

/// Chat messages as the template wants them; only text content.
fn chat_messages(messages: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "must not be empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" | "assistant" => m.role.as_str(),
                other => {
                    let reason = format!("must be system, developer, user or assistant, got {other:?}");
                    return Err(ApiError::invalid(&format!("messages[{i}].role"), reason));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                let field = format!("messages[{i}].content[{j}]");
                                return Err(ApiError::unsupported(
                                    &field,
                                    &format!("content parts of type {kind:?} (only text)"),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage { role: role.to_string(), content })
        })
        .collect()
}

async fn check(engine: &EngineHandle, r: Request, route: Route) -> Result<Checked, ApiError> {
    refuse_unsupported(&r, route)?;
    let adapter = model_adapter(engine, &r.model)?;
    // OpenAI's own range (the engine allows up to engine::request::MAX_TEMPERATURE).
    if let Some(t) = r.temperature.filter(|t| !(0.0..=MAX_TEMPERATURE).contains(t)) {
        return Err(ApiError::invalid("temperature", format!("must be between 0 and {MAX_TEMPERATURE}, got {t}")));
    }
    let input = SamplingInput {
        // OpenAI samples at temperature 1 unless told otherwise.
        do_sample: true,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k,
        repetition_penalty: r.repetition_penalty,
        seed: r.seed.map(|s| s as u64),
    };
    let (mut sampling, _) = params::sampling(&input);
    sampling.presence_penalty = r.presence_penalty.unwrap_or(0.0);
    sampling.frequency_penalty = r.frequency_penalty.unwrap_or(0.0);
    sampling.logit_bias = logit_bias(r.logit_bias.as_ref())?;
    let (want_logprobs, top_logprobs) = logprobs(&r, route)?;
    sampling.top_logprobs = top_logprobs;
    let (max_field, asked) = match r.max_completion_tokens {
        Some(n) => ("max_completion_tokens", Some(n)),
        None => ("max_tokens", r.max_tokens),
    };
    let default = if route == Route::Text { DEFAULT_COMPLETION_TOKENS } else { usize::MAX };
    let (prompt, prompt_field, echo) = match route {
        Route::Chat => {
            let messages = chat_messages(r.messages.ok_or_else(|| ApiError::invalid("messages", "is required"))?)?;
            // The template writes any BOS itself, as transformers' apply_chat_template; messages' contents are
            // content, so special-token text in them stays text.
            let parts = engine.tokenizer().chat_parts(&messages, true).map_err(|e| ApiError::invalid("messages", e))?;
            (Prompt::Parts { parts, add_bos: false }, "messages", None)
        }
        Route::Text => {
            let text = match r.prompt.ok_or_else(|| ApiError::invalid("prompt", "is required"))? {
                PromptInput::One(t) => t,
                PromptInput::Many(mut v) if v.len() == 1 => v.remove(0),
                PromptInput::Many(v) => {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!("only one prompt per request is supported, got {}", v.len()),
                    ))
                }
            };
            let echo = r.echo.unwrap_or(false).then(|| text.clone());
            (Prompt::Text(text), "prompt", echo)
        }
    };
    let request = GenerateRequest {
        prompt,
        adapter,
        sampling,
        max_new_tokens: asked.map_or(default, params::count),
        fit_context: asked.is_none(),
        stop: r.stop.map(Stop::into_vec).unwrap_or_default(),
        constraint: params::response_format(r.response_format.as_ref(), "response_format")?,
        n: r.n.map(params::count),
        ..GenerateRequest::default()
    };
    let wire = Wire { prefix: "", prompt: prompt_field, adapter: "model", max_new_tokens: max_field };
    let prepared = params::prepare(engine, request, &wire).await.map_err(|e| unknown_model(e, &r.model))?;
    Ok(Checked {
        route,
        prepared,
        model: r.model,
        echo,
        stream: r.stream.unwrap_or(false),
        include_usage: r.stream_options.is_some_and(|o| o.include_usage),
        logprobs: want_logprobs,
    })
}

/// OpenAI's name for a finish reason.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Eos | FinishReason::StopSequence | FinishReason::Constraint => "stop",
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One choice of an answer or chunk: its index, its text (the message content or delta), the role (only on a
/// chat answer and a choice's first delta), its finish reason and its tokens' log-probabilities.
#[derive(Debug, Default)]
struct Part {
    index: usize,
    text: Option<String>,
    role: bool,
    finish: Option<&'static str>,
    logprobs: Option<serde_json::Value>,
}

/// The envelope of every answer and chunk of one request.
#[derive(Clone, Debug)]
struct Envelope {
    id: String,
    created: u64,
    model: String,
    route: Route,
}

impl Envelope {
    fn new(c: &Checked) -> Self {
        let prefix = if c.route == Route::Chat { "chatcmpl" } else { "cmpl" };
        Self {
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: now_secs(),
            model: c.model.clone(),
            route: c.route,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.route, chunk) {
            (Route::Chat, false) => "chat.completion",
            (Route::Chat, true) => "chat.completion.chunk",
            (Route::Text, _) => "text_completion",
        }
    }

    /// An answer (`chunk` false) or chunk with these choices; `usage` is `Some(None)` for a null one.
    fn json(&self, chunk: bool, parts: Vec<Part>, usage: Option<Option<Usage>>) -> serde_json::Value {
        let value = match self.route {
            Route::Chat => {
                let choices = (parts.into_iter())
                    .map(|p| {
                        let msg = OutMessage { role: p.role.then_some("assistant"), content: p.text };
                        let (message, delta) = if chunk { (None, Some(msg)) } else { (Some(msg), None) };
                        let index = p.index as u32;
                        ChatChoice { index, message, delta, logprobs: p.logprobs, finish_reason: p.finish }
                    })
                    .collect();
                serde_json::to_value(self.completion(chunk, choices, usage))
            }
            Route::Text => {
                let choices = (parts.into_iter())
                    .map(|p| TextChoice {
                        index: p.index as u32,
                        text: p.text.unwrap_or_default(),
                        logprobs: p.logprobs,
                        finish_reason: p.finish,
                    })
                    .collect();
                serde_json::to_value(self.completion(chunk, choices, usage))
            }
        };
        value.unwrap_or_default()
    }

    fn completion<C>(&self, chunk: bool, choices: Vec<C>, usage: Option<Option<Usage>>) -> Completion<C> {
        Completion {
            id: self.id.clone(),
            object: self.object(chunk),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        }
    }

    /// The last chunk of a stream with `include_usage`: no choices, the usage.
    fn usage_chunk(&self, usage: Usage) -> serde_json::Value {
        serde_json::to_value(self.completion::<TextChoice>(true, Vec::new(), Some(Some(usage)))).unwrap_or_default()
    }
}

async fn complete(state: &AppState, body: Request, route: Route) -> Result<Response, ApiError> {
    let engine = engine(state)?;
    let checked = check(engine, body, route).await?;
    let envelope = Envelope::new(&checked);
    let choices = checked.prepared.request().choices();
    let mut running = generation::submit(engine, checked.prepared.clone())?;
    let adapter = running.adapter.clone();
    let mut res = if checked.stream {
        let first = generation::first_event(&mut running).await?;
        let logprobs = checked.logprobs.then(|| engine.clone());
        let events = generation::events(first, running);
        let options = StreamShape { choices, include_usage: checked.include_usage, echo: checked.echo, logprobs };
        sse::response(stream_events(events, envelope, options))
    } else {
        let all = generation::collect_all(running).await?;
        let echo = checked.echo.unwrap_or_default();
        let prompt_tokens = all[0].finished.prompt_tokens;
        let usage = Usage::new(prompt_tokens, all.iter().map(|c| c.finished.generated_tokens).sum());
        let parts = (all.into_iter().enumerate())
            .map(|(index, done)| Part {
                index,
                logprobs: checked.logprobs.then(|| logprobs_json(engine, route, &done.tokens, echo.len())),
                text: Some(format!("{echo}{}", done.finished.text)),
                role: true,
                finish: Some(finish_reason(done.finished.reason)),
            })
            .collect();
        Json(envelope.json(false, parts, Some(Some(usage)))).into_response()
    };
    res.extensions_mut().insert(AdapterLabel(adapter));
    Ok(res)
}

/// How a stream is written.
struct StreamShape {
    /// Continuations (OpenAI's `n`).
    choices: usize,
    /// End with a usage chunk.
    include_usage: bool,
    /// The prompt, echoed first (completions).
    echo: Option<String>,
    /// With log-probabilities (the engine names the tokens).
    logprobs: Option<EngineHandle>,
}

/// OpenAI chunks from engine events: a first chunk per choice with the role (chat) or echoed prompt
/// (completions), one per token with text, one per choice with its finish reason, then the usage chunk if asked,
/// and `[DONE]` once every choice has finished. With log-probabilities, each chunk carries those of its choice's
/// tokens since its last chunk (a token whose text is held back goes with the next). A failure ends the stream
/// with an `error` event in OpenAI's shape.
fn stream_events(
    events: impl futures_util::Stream<Item = Result<Event, ApiError>> + Send + 'static,
    env: Envelope,
    options: StreamShape,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let StreamShape { choices, include_usage, echo, logprobs } = options;
    let usage_field = include_usage.then_some(None);
    let echo_len = echo.as_ref().map_or(0, String::len);
    let opening: Vec<serde_json::Value> = (0..choices)
        .filter_map(|index| match env.route {
            Route::Chat => Some(Part { index, text: Some(String::new()), role: true, ..Part::default() }),
            Route::Text => echo.clone().map(|e| Part { index, text: Some(e), ..Part::default() }),
        })
        .map(|part| env.json(true, vec![part], usage_field))
        .collect();
    let head = futures_util::stream::iter(opening.into_iter().map(|v| sse::json_event(&v)));
    // Per choice: the tokens whose log-probabilities are not sent yet, and the bytes of text before them.
    let mut pending: Vec<Vec<engine::TokenEvent>> = vec![Vec::new(); choices];
    let mut offsets = vec![echo_len; choices];
    let (mut open, mut generated) = (choices, 0);
    let mut take_logprobs = move |c: usize, pending: &mut Vec<Vec<engine::TokenEvent>>| {
        let engine = logprobs.as_ref()?;
        let tokens = std::mem::take(pending.get_mut(c)?);
        let json = logprobs_json(engine, env.route, &tokens, offsets[c]);
        offsets[c] += tokens.iter().map(|t| t.text.len()).sum::<usize>();
        Some(json)
    };
    let body = events.map(move |event| {
        let out: Vec<SseEvent> = match event {
            Ok(Event::Token(t)) if t.text.is_empty() => {
                if let Some(p) = pending.get_mut(t.choice) {
                    p.push(t);
                }
                Vec::new()
            }
            Ok(Event::Token(t)) => {
                let (index, text) = (t.choice, t.text.clone());
                if let Some(p) = pending.get_mut(index) {
                    p.push(t);
                }
                let logprobs = take_logprobs(index, &mut pending);
                let part = Part { index, text: Some(text), logprobs, ..Part::default() };
                vec![sse::json_event(&env.json(true, vec![part], usage_field))]
            }
            Ok(Event::Finished(f)) => {
                let index = f.choice;
                let held = pending.get(index).is_some_and(|p| !p.is_empty());
                let logprobs = if held { take_logprobs(index, &mut pending) } else { None };
                let part = Part { index, finish: Some(finish_reason(f.reason)), logprobs, ..Part::default() };
                let mut out = vec![sse::json_event(&env.json(true, vec![part], usage_field))];
                open = open.saturating_sub(1);
                generated += f.generated_tokens;
                if open == 0 {
                    if include_usage {
                        out.push(sse::json_event(&env.usage_chunk(Usage::new(f.prompt_tokens, generated))));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                }
                out
            }
            Err(e) => vec![sse::error_event(&e, Flavor::OpenAi)],
        };
        futures_util::stream::iter(out)
    });
    head.chain(body.flatten()).map(Ok)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<Request>,
) -> Result<Response, OpenAiError> {
    Ok(complete(&state, body, Route::Chat).await?)
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<Request>,
) -> Result<Response, OpenAiError> {
    Ok(complete(&state, body, Route::Text).await?)
}

/// `GET /v1/models`: the base model, then every adapter of the catalog with the base as `parent`.
pub async fn models(State(state): State<AppState>) -> Result<Json<ModelList>, OpenAiError> {
    let engine = engine(&state)?;
    let base = engine.model_info().name.clone();
    let created = now_secs();
    let entry =
        |id: String, parent: Option<String>| Model { id, object: "model", created, owned_by: "loraland", parent };
    let mut data = vec![entry(base.clone(), None)];
    data.extend(engine.config().catalog.list_local().into_iter().map(|id| entry(id.to_string(), Some(base.clone()))));
    Ok(Json(ModelList { object: "list", data }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use engine::TokenEvent;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_error_after_tokens_ends_the_stream_with_an_openai_error_event() {
        let env = Envelope { id: "chatcmpl-1".into(), created: 0, model: "m".into(), route: Route::Chat };
        let token = Ok(Event::Token(TokenEvent {
            id: 1,
            text: "hi".into(),
            logprob: -0.1,
            special: false,
            choice: 0,
            top: vec![],
        }));
        let events = vec![token, Err(ApiError::internal("forward step failed"))];
        let options = StreamShape { choices: 1, include_usage: false, echo: None, logprobs: None };
        let stream = stream_events(futures_util::stream::iter(events), env, options);
        let bytes = sse::response(stream).into_response().into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(bytes.to_vec()).unwrap();
        let blocks: Vec<&str> = body.split("\n\n").filter(|b| !b.is_empty()).collect();
        assert_eq!(blocks.len(), 3, "{body}");
        assert!(blocks[0].contains(r#""role":"assistant""#), "{body}");
        assert!(blocks[1].contains(r#""content":"hi""#), "{body}");
        assert!(blocks[2].starts_with("event: error\ndata: {\"error\":{"), "{body}");
        assert!(blocks[2].contains(r#""type":"server_error""#), "{body}");
        assert!(!body.contains("[DONE]"), "a failed stream does not end with [DONE]");
    }
}
