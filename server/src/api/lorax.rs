//! The LoRAX (TGI-style) API: `POST /generate`, `POST /generate_stream` and the compatibility route `POST /` that
//! lorax-client posts to (`stream` in the body decides; a non-streaming answer is a one-element list).
//! Request and response shapes follow lorax-client's `types.py`.

use super::error::{ApiError, ErrorKind, Flavor, LoraxError};
use super::extract::LoraxJson;
use super::generation::engine;
use super::generation::{self, AdapterLabel, Collected};
use super::params::{self, SamplingInput, Wire};
use super::sse;
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::adapter::merge::{MajoritySign, MergeParams, MergeStrategy};
use engine::{
    AdapterId, EngineHandle, Event, FinishReason, GenerateRequest, MergedAdapters, Prompt, SourceChoice, TokenEvent,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// Default `max_new_tokens` when a request does not say (TGI's default).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 100;

/// The body of every LoRAX generation route.
#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    /// The prompt, used as it is (no chat template).
    pub inputs: String,
    /// Generation parameters.
    #[serde(default)]
    pub parameters: Option<Parameters>,
    /// On `POST /`: answer as a stream of server-sent events.
    #[serde(default)]
    pub stream: bool,
}

/// LoRAX's generation parameters. Fields that lorax-client always sends but this server does not implement are
/// accepted when unset (null / false) and refused by name when set.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct Parameters {
    pub adapter_id: Option<String>,
    pub adapter_source: Option<String>,
    pub api_token: Option<String>,
    pub merged_adapters: Option<MergedAdaptersBody>,
    pub do_sample: bool,
    pub max_new_tokens: Option<i64>,
    pub ignore_eos_token: bool,
    pub repetition_penalty: Option<f32>,
    pub return_full_text: bool,
    pub stop: Option<Vec<String>>,
    pub seed: Option<u64>,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub truncate: Option<i64>,
    pub typical_p: Option<f32>,
    pub best_of: Option<i64>,
    pub watermark: bool,
    pub details: bool,
    pub decoder_input_details: bool,
    pub return_k_alternatives: Option<i64>,
    pub response_format: Option<serde_json::Value>,
}

/// `parameters.merged_adapters`, as lorax-client's `MergedAdapters` sends it.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct MergedAdaptersBody {
    pub ids: Vec<String>,
    pub weights: Option<Vec<f64>>,
    pub merge_strategy: Option<String>,
    pub density: Option<f64>,
    pub majority_sign_method: Option<String>,
}

/// A request that passed every check.
#[derive(Debug)]
struct Checked {
    prepared: engine::Prepared,
    inputs: String,
    seed: Option<u64>,
    details: bool,
    decoder_input_details: bool,
    return_full_text: bool,
}

const WIRE: Wire = Wire {
    prefix: "parameters.",
    prompt: "inputs",
    adapter: "parameters.adapter_id",
    max_new_tokens: "max_new_tokens",
};

fn refuse_unsupported(p: &Parameters) -> Result<(), ApiError> {
    let set = [
        ("typical_p", p.typical_p.is_some(), "typical sampling"),
        ("watermark", p.watermark, "watermarking"),
        ("ignore_eos_token", p.ignore_eos_token, "ignoring the end-of-sequence token"),
        ("return_k_alternatives", p.return_k_alternatives.is_some(), "alternative tokens"),
    ];
    match set.into_iter().find(|(_, on, _)| *on) {
        Some((field, _, what)) => Err(ApiError::unsupported(&format!("parameters.{field}"), what)),
        None => Ok(()),
    }
}

/// The adapter and where it, or the adapters merged (`merged_adapters`), may come from (`adapter_source`: `local`,
/// the default, or `hub`).
fn adapter(p: &Parameters) -> Result<(Option<AdapterId>, SourceChoice), ApiError> {
    let id = p.adapter_id.as_deref().filter(|id| !id.is_empty());
    if id.is_none() && p.merged_adapters.is_none() {
        return Ok((None, SourceChoice::Any));
    }
    let field = "parameters.adapter_id";
    let id = id
        .map(AdapterId::new)
        .transpose()
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("`{field}`: {e}")).with_param(field))?;
    let source = match p.adapter_source.as_deref() {
        None | Some("local") => SourceChoice::Local,
        Some("hub") => SourceChoice::Hub,
        Some(s @ ("s3" | "pbase")) => return Err(ApiError::unsupported("parameters.adapter_source", s)),
        Some(other) => {
            return Err(ApiError::invalid(
                "parameters.adapter_source",
                format!("must be `local` or `hub`, got {other:?}"),
            ))
        }
    };
    Ok((id, source))
}

/// The adapters to merge (`parameters.merged_adapters`): ids, weights (1 each when left out), the strategy
/// (`linear` when left out), the density (1) and the sign election (`total`). The engine checks the rest.
fn merged_adapters(p: &Parameters) -> Result<Option<MergedAdapters>, ApiError> {
    let Some(m) = &p.merged_adapters else { return Ok(None) };
    let field = "parameters.merged_adapters";
    let ids = m
        .ids
        .iter()
        .map(|id| {
            AdapterId::new(id)
                .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("`{field}.ids`: {e}")).with_param(field))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let weights = m.weights.clone().unwrap_or_else(|| vec![1.0; ids.len()]);
    let strategy = match m.merge_strategy.as_deref() {
        None => MergeStrategy::Linear,
        Some(name) => MergeStrategy::from_name(&name.to_ascii_lowercase()).ok_or_else(|| {
            let names: Vec<&str> = MergeStrategy::ALL.iter().map(|s| s.name()).collect();
            let message = format!("must be one of {}, got {name:?}", names.join(", "));
            ApiError::invalid(&format!("{field}.merge_strategy"), message)
        })?,
    };
    let majority_sign = match m.majority_sign_method.as_deref() {
        None => MajoritySign::Total,
        Some(name) => MajoritySign::from_name(&name.to_ascii_lowercase()).ok_or_else(|| {
            let message = format!("must be `total` or `frequency`, got {name:?}");
            ApiError::invalid(&format!("{field}.majority_sign_method"), message)
        })?,
    };
    let params = MergeParams { strategy, density: m.density.unwrap_or(1.0), majority_sign };
    Ok(Some(MergedAdapters { ids, weights, params }))
}

/// `best_of` as a number of continuations: more than one needs sampling and a non-streaming route (as TGI).
fn best_of(p: &Parameters, sampling: bool, streaming: bool) -> Result<Option<usize>, ApiError> {
    let field = "parameters.best_of";
    match p.best_of {
        None | Some(1) => Ok(None),
        Some(n) if n < 1 => Err(ApiError::invalid(field, format!("must be strictly positive, got {n}"))),
        Some(_) if !sampling => {
            Err(ApiError::invalid(field, "above 1 needs sampling (`do_sample`, or a temperature, top_k or top_p)"))
        }
        Some(_) if streaming => Err(ApiError::invalid(field, "above 1 is not supported when streaming")),
        Some(n) => Ok(Some(params::count(n))),
    }
}

async fn check(engine: &EngineHandle, body: GenerateBody, streaming: bool) -> Result<Checked, ApiError> {
    let p = body.parameters.unwrap_or_default();
    refuse_unsupported(&p)?;
    let (adapter, adapter_source) = adapter(&p)?;
    let merged_adapters = merged_adapters(&p)?;
    let input = SamplingInput {
        do_sample: p.do_sample,
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        repetition_penalty: p.repetition_penalty,
        seed: p.seed,
    };
    let (sampling, seed) = params::sampling(&input);
    let n = best_of(&p, !sampling.is_greedy(), streaming)?;
    let request = GenerateRequest {
        prompt: Prompt::Text(body.inputs.clone()),
        adapter,
        adapter_source,
        sampling,
        max_new_tokens: p.max_new_tokens.map_or(DEFAULT_MAX_NEW_TOKENS, params::count),
        fit_context: p.max_new_tokens.is_none(),
        truncate: p.truncate.map(params::count),
        stop: p.stop.unwrap_or_default(),
        constraint: params::response_format(p.response_format.as_ref(), "parameters.response_format")?,
        prompt_logprobs: p.details && p.decoder_input_details,
        merged_adapters,
        n,
    };
    Ok(Checked {
        prepared: params::prepare(engine, request, &WIRE).await?,
        inputs: body.inputs,
        seed,
        details: p.details,
        decoder_input_details: p.decoder_input_details,
        return_full_text: p.return_full_text,
    })
}

/// A generated token as LoRAX sends it.
#[derive(Debug, Serialize)]
pub struct Token {
    id: u32,
    text: String,
    logprob: f32,
    special: bool,
}

impl From<&TokenEvent> for Token {
    fn from(t: &TokenEvent) -> Self {
        Self { id: t.id, text: t.text.clone(), logprob: t.logprob, special: t.special }
    }
}

/// A prompt token (`decoder_input_details`), with its log-probability given the tokens before it (null for the
/// first, as TGI).
#[derive(Debug, Serialize)]
pub struct InputToken {
    id: u32,
    text: String,
    logprob: Option<f32>,
}

/// `details` of a non-streaming answer.
#[derive(Debug, Serialize)]
pub struct Details {
    finish_reason: &'static str,
    prompt_tokens: usize,
    generated_tokens: usize,
    seed: Option<u64>,
    prefill: Vec<InputToken>,
    tokens: Vec<Token>,
    /// With `best_of`: the other sequences.
    #[serde(skip_serializing_if = "Option::is_none")]
    best_of_sequences: Option<Vec<BestOfSequence>>,
}

/// One of the sequences `best_of` generated and did not choose.
#[derive(Debug, Serialize)]
pub struct BestOfSequence {
    generated_text: String,
    finish_reason: &'static str,
    generated_tokens: usize,
    seed: Option<u64>,
    prefill: Vec<InputToken>,
    tokens: Vec<Token>,
}

/// A non-streaming answer.
#[derive(Debug, Serialize)]
pub struct GenerateResponse {
    generated_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
}

/// `details` of the last stream event.
#[derive(Debug, Serialize)]
pub struct StreamDetails {
    finish_reason: &'static str,
    prompt_tokens: usize,
    generated_tokens: usize,
    seed: Option<u64>,
}

/// One stream event: a token; the last also carries the whole text and the details.
#[derive(Debug, Serialize)]
pub struct StreamResponse {
    token: Token,
    generated_text: Option<String>,
    details: Option<StreamDetails>,
}

/// LoRAX's name for a finish reason.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Eos => "eos_token",
        FinishReason::StopSequence => "stop_sequence",
        // lorax-client's reasons are a closed set: a grammar that cannot go on ends the sequence as EOS would.
        FinishReason::Constraint => "eos_token",
    }
}

fn prefill(engine: &EngineHandle, ids: &[u32], logprobs: &[f32]) -> Vec<InputToken> {
    let tok = engine.tokenizer();
    let logprob = |i: usize| i.checked_sub(1).and_then(|i| logprobs.get(i).copied());
    (ids.iter().enumerate())
        .map(|(i, &id)| InputToken { id, text: tok.decode(&[id], false).unwrap_or_default(), logprob: logprob(i) })
        .collect()
}

/// The answer: the one sequence, or with `best_of` the one whose tokens are likeliest (the highest sum of
/// log-probabilities), the others in `details.best_of_sequences`. Each reports the seed it was sampled with (the
/// request's seed plus its index), which replays it alone.
fn answer(engine: &EngineHandle, checked: &Checked, mut all: Vec<Collected>) -> GenerateResponse {
    let score = |c: &Collected| c.tokens.iter().map(|t| f64::from(t.logprob)).sum::<f64>();
    let best = (0..all.len()).max_by(|&a, &b| score(&all[a]).total_cmp(&score(&all[b])).then(b.cmp(&a))).unwrap_or(0);
    let seed = |choice: usize| checked.seed.map(|s| s.wrapping_add(choice as u64));
    let text = |t: String| if checked.return_full_text { format!("{}{t}", checked.inputs) } else { t };
    let prefill = |f: &engine::Finished| match checked.decoder_input_details {
        true => prefill(engine, checked.prepared.prompt(), &f.prompt_logprobs),
        false => Vec::new(),
    };
    let chosen = all.remove(best);
    let others = (!all.is_empty()).then(|| {
        (all.into_iter())
            .map(|c| BestOfSequence {
                finish_reason: finish_reason(c.finished.reason),
                generated_tokens: c.finished.generated_tokens,
                seed: seed(c.finished.choice),
                prefill: prefill(&c.finished),
                tokens: c.tokens.iter().map(Token::from).collect(),
                generated_text: text(c.finished.text),
            })
            .collect()
    });
    let f = chosen.finished;
    let details = checked.details.then(|| Details {
        finish_reason: finish_reason(f.reason),
        prompt_tokens: f.prompt_tokens,
        generated_tokens: f.generated_tokens,
        seed: seed(f.choice),
        prefill: prefill(&f),
        tokens: chosen.tokens.iter().map(Token::from).collect(),
        best_of_sequences: others,
    });
    GenerateResponse { generated_text: text(f.text), details }
}

fn labelled(mut res: Response, adapter: String) -> Response {
    res.extensions_mut().insert(AdapterLabel(adapter));
    res
}

async fn generate_inner(state: &AppState, body: GenerateBody, as_list: bool) -> Result<Response, ApiError> {
    let engine = engine(state)?;
    let checked = check(engine, body, false).await?;
    let running = generation::submit(engine, checked.prepared.clone())?;
    let adapter = running.adapter.clone();
    let all = generation::collect_all(running).await?;
    let answer = answer(engine, &checked, all);
    let res = if as_list { Json(vec![answer]).into_response() } else { Json(answer).into_response() };
    Ok(labelled(res, adapter))
}

async fn stream_inner(state: &AppState, body: GenerateBody) -> Result<Response, ApiError> {
    let engine = engine(state)?;
    let checked = check(engine, body, true).await?;
    let mut running = generation::submit(engine, checked.prepared.clone())?;
    let first = generation::first_event(&mut running).await?;
    let adapter = running.adapter.clone();
    let events = stream_events(generation::events(first, running), StreamContext::from(&checked));
    Ok(labelled(sse::response(events), adapter))
}

/// What the last stream event needs to know about the request.
#[derive(Clone, Debug, Default)]
pub struct StreamContext {
    /// Prepended to `generated_text` with `return_full_text`.
    pub prefix: Option<String>,
    /// Whether to send details on the last event.
    pub details: bool,
    /// The seed, when sampling.
    pub seed: Option<u64>,
}

impl From<&Checked> for StreamContext {
    fn from(c: &Checked) -> Self {
        Self { prefix: c.return_full_text.then(|| c.inputs.clone()), details: c.details, seed: c.seed }
    }
}

/// LoRAX stream events from engine events. Each token is held until the next event, so that the last token can
/// carry `generated_text` and `details`; a failure ends the stream with an `error` event.
pub fn stream_events(
    events: impl futures_util::Stream<Item = Result<Event, ApiError>> + Send + 'static,
    ctx: StreamContext,
) -> impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>> + Send + 'static {
    let mut held: Option<Token> = None;
    events
        .map(move |event| {
            let plain = |token| sse::json_event(&StreamResponse { token, generated_text: None, details: None });
            let out: Vec<_> = match event {
                Ok(Event::Token(t)) => held.replace(Token::from(&t)).map(plain).into_iter().collect(),
                Ok(Event::Finished(f)) => {
                    let token =
                        held.take().unwrap_or(Token { id: 0, text: String::new(), logprob: 0.0, special: true });
                    let text = format!("{}{}", ctx.prefix.as_deref().unwrap_or(""), f.text);
                    let details = ctx.details.then(|| StreamDetails {
                        finish_reason: finish_reason(f.reason),
                        prompt_tokens: f.prompt_tokens,
                        generated_tokens: f.generated_tokens,
                        seed: ctx.seed,
                    });
                    vec![sse::json_event(&StreamResponse { token, generated_text: Some(text), details })]
                }
                // The tokens already generated are sent before the error.
                Err(e) => held.take().map(plain).into_iter().chain([sse::error_event(&e, Flavor::Lorax)]).collect(),
            };
            futures_util::stream::iter(out.into_iter().map(Ok))
        })
        .flatten()
}

/// `POST /generate`.
pub async fn generate(
    State(state): State<AppState>,
    LoraxJson(body): LoraxJson<GenerateBody>,
) -> Result<Response, LoraxError> {
    Ok(generate_inner(&state, body, false).await?)
}

/// `POST /generate_stream`.
pub async fn generate_stream(
    State(state): State<AppState>,
    LoraxJson(body): LoraxJson<GenerateBody>,
) -> Result<Response, LoraxError> {
    Ok(stream_inner(&state, body).await?)
}

/// `POST /`: lorax-client's route; `stream` decides between SSE and a one-element list.
pub async fn compat(
    State(state): State<AppState>,
    LoraxJson(body): LoraxJson<GenerateBody>,
) -> Result<Response, LoraxError> {
    if body.stream {
        Ok(stream_inner(&state, body).await?)
    } else {
        Ok(generate_inner(&state, body, true).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ErrorKind;
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;

    fn token(id: u32, text: &str) -> Result<Event, ApiError> {
        Ok(Event::Token(TokenEvent { id, text: text.into(), logprob: -0.5, special: false, choice: 0, top: vec![] }))
    }

    async fn body_of(events: Vec<Result<Event, ApiError>>) -> String {
        let stream = stream_events(futures_util::stream::iter(events), StreamContext::default());
        let bytes = sse::response(stream).into_response().into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn an_error_after_tokens_ends_the_stream_with_an_error_event() {
        let failure = ApiError::new(ErrorKind::AdapterLoad, "adapter x failed to load: bad tensor");
        let body = body_of(vec![token(1, "a"), token(2, "b"), Err(failure)]).await;
        let blocks: Vec<&str> = body.split("\n\n").filter(|b| !b.is_empty()).collect();
        assert_eq!(blocks.len(), 3, "{body}");
        assert!(blocks[0].starts_with("data: {\"token\":{\"id\":1"), "{body}");
        assert!(blocks[1].starts_with("data: {\"token\":{\"id\":2"), "the held token is sent before the error: {body}");
        assert_eq!(
            blocks[2],
            "event: error\ndata: {\"error\":\"adapter x failed to load: bad tensor\",\"error_type\":\"adapter_load\"}"
        );
    }
}
