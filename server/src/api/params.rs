//! Checks shared by the LoRAX and OpenAI routes: every sampling parameter's range, stop sequences, the adapter id,
//! and the prompt's length, each failure naming the field. Runs before anything is queued.

use super::error::{ApiError, ErrorKind};
use engine::{AdapterId, Catalog, EngineHandle, SamplingParams};

/// Most stop sequences per request (as TGI).
pub const MAX_STOP_SEQUENCES: usize = 4;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Highest temperature accepted.
pub const MAX_TEMPERATURE: f32 = 100.0;

/// Sampling settings as a request states them, before checking.
#[derive(Clone, Debug, Default)]
pub struct SamplingInput {
    /// Ask for sampling even without other settings (LoRAX `do_sample`).
    pub do_sample: bool,
    /// Softmax temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Top-k filter.
    pub top_k: Option<i64>,
    /// CTRL-style repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Random seed.
    pub seed: Option<u64>,
}

/// Field names of [`SamplingInput`] on one API (`parameters.temperature` on LoRAX, `temperature` on OpenAI).
pub struct Fields {
    /// Prefix of every field name.
    pub prefix: &'static str,
}

impl Fields {
    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }
}

/// Checks every range and returns the engine's sampling parameters and the seed to report (sampling only: a
/// request that samples without a seed gets a random one, reported so that it can be replayed).
pub fn sampling(input: &SamplingInput, fields: &Fields) -> Result<(SamplingParams, Option<u64>), ApiError> {
    if let Some(t) = input.temperature {
        if !(0.0..=MAX_TEMPERATURE).contains(&t) {
            return Err(ApiError::invalid(
                &fields.name("temperature"),
                format!("must be between 0 and {MAX_TEMPERATURE}, got {t}"),
            ));
        }
    }
    if let Some(p) = input.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(&fields.name("top_p"), format!("must be > 0 and <= 1, got {p}")));
        }
    }
    if let Some(k) = input.top_k {
        if k <= 0 {
            return Err(ApiError::invalid(&fields.name("top_k"), format!("must be strictly positive, got {k}")));
        }
    }
    if let Some(r) = input.repetition_penalty {
        if !(r > 0.0 && r.is_finite()) {
            return Err(ApiError::invalid(
                &fields.name("repetition_penalty"),
                format!("must be strictly positive, got {r}"),
            ));
        }
    }
    let filters = input.top_k.is_some() || input.top_p.is_some_and(|p| p < 1.0);
    let sample = match input.temperature {
        Some(0.0) => false,
        Some(_) => true,
        None => input.do_sample || filters,
    };
    if !sample {
        let params = SamplingParams { repetition_penalty: input.repetition_penalty, ..SamplingParams::greedy() };
        return Ok((params, None));
    }
    let seed = input.seed.unwrap_or_else(rand::random);
    let params = SamplingParams {
        temperature: Some(input.temperature.unwrap_or(1.0)),
        top_k: input.top_k.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
        top_p: input.top_p.filter(|&p| p < 1.0),
        repetition_penalty: input.repetition_penalty,
        seed,
    };
    Ok((params, Some(seed)))
}

/// `max_new_tokens` (or `max_tokens`) for a prompt of `prompt_len` tokens: when absent, `default` capped by the
/// engine's limit and by the room left in the model's context; when given, 1 ..= the engine's limit, and the
/// prompt plus it must fit the context (422 otherwise, as TGI's `max_total_tokens`).
pub fn max_new_tokens(
    engine: &EngineHandle,
    field: &str,
    value: Option<i64>,
    default: usize,
    prompt_len: usize,
) -> Result<usize, ApiError> {
    let max = engine.config().max_new_tokens;
    let context = engine.model_info().max_position_embeddings;
    let room = context.saturating_sub(prompt_len);
    let n = match value {
        None => default.min(max).min(room),
        Some(v) if v >= 1 && usize::try_from(v).is_ok_and(|v| v <= max) => v as usize,
        Some(v) => return Err(ApiError::invalid(field, format!("must be between 1 and {max}, got {v}"))),
    };
    if n == 0 || n > room {
        let message = format!(
            "the prompt ({prompt_len} tokens) plus `{field}` ({n}) exceeds the model's context of {context} tokens"
        );
        return Err(ApiError::new(ErrorKind::PromptTooLong, message).with_param(field));
    }
    Ok(n)
}

/// Stop sequences: at most [`MAX_STOP_SEQUENCES`], none empty or longer than [`MAX_STOP_BYTES`].
pub fn stop(field: &str, stop: Vec<String>) -> Result<Vec<String>, ApiError> {
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::invalid(
            field,
            format!("has {} sequences, at most {MAX_STOP_SEQUENCES} are allowed", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(field, "must not contain an empty string"));
    }
    if let Some(s) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            field,
            format!("has a sequence of {} bytes, at most {MAX_STOP_BYTES} are allowed", s.len()),
        ));
    }
    Ok(stop)
}

/// An adapter id: a valid name (400 otherwise) that `catalog` knows (404 otherwise).
pub fn adapter(catalog: &Catalog, field: &str, id: &str) -> Result<AdapterId, ApiError> {
    let id = AdapterId::new(id)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("`{field}`: {e}")).with_param(field))?;
    catalog.resolve(&id).map_err(|e| ApiError::from(e).with_param(field))?;
    Ok(id)
}

/// Tokenizes `text` and checks its length: empty is 422, longer than the engine's limit is 422 with the limit.
/// With `truncate`, only the last `truncate` tokens are kept (LoRAX `truncate`).
pub fn prompt_tokens(
    engine: &EngineHandle,
    field: &str,
    text: &str,
    add_bos: bool,
    truncate: Option<usize>,
) -> Result<Vec<u32>, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    let mut ids = engine.tokenizer().encode(text, add_bos).map_err(ApiError::internal)?;
    if let Some(n) = truncate {
        if ids.len() > n {
            ids.drain(..ids.len() - n);
        }
    }
    // One position is kept for the first generated token.
    let context = engine.model_info().max_position_embeddings;
    let max = engine.config().max_input_tokens.min(context.saturating_sub(1));
    if ids.len() > max {
        let message = format!("`{field}` has {} tokens, more than the limit of {max}", ids.len());
        return Err(ApiError::new(ErrorKind::PromptTooLong, message).with_param(field));
    }
    if ids.is_empty() {
        return Err(ApiError::invalid(field, "has no tokens"));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LORAX: Fields = Fields { prefix: "parameters." };

    #[test]
    fn greedy_unless_asked_to_sample() {
        let (p, seed) = sampling(&SamplingInput::default(), &LORAX).unwrap();
        assert!(p.is_greedy());
        assert_eq!(seed, None);
        let zero = SamplingInput { temperature: Some(0.0), top_k: Some(5), ..Default::default() };
        assert!(sampling(&zero, &LORAX).unwrap().0.is_greedy());
        let sample = SamplingInput { do_sample: true, seed: Some(7), ..Default::default() };
        let (p, seed) = sampling(&sample, &LORAX).unwrap();
        assert_eq!((p.temperature, p.seed, seed), (Some(1.0), 7, Some(7)));
        let top_k = SamplingInput { top_k: Some(3), ..Default::default() };
        let (p, seed) = sampling(&top_k, &LORAX).unwrap();
        assert_eq!(p.top_k, Some(3));
        assert!(seed.is_some(), "a random seed is chosen and reported");
    }

    #[test]
    fn ranges_name_the_field() {
        let cases = [
            (SamplingInput { temperature: Some(-1.0), ..Default::default() }, "`parameters.temperature`"),
            (SamplingInput { temperature: Some(1e9), ..Default::default() }, "`parameters.temperature`"),
            (SamplingInput { top_p: Some(0.0), ..Default::default() }, "`parameters.top_p`"),
            (SamplingInput { top_p: Some(1.5), ..Default::default() }, "`parameters.top_p`"),
            (SamplingInput { top_k: Some(0), ..Default::default() }, "`parameters.top_k`"),
            (SamplingInput { repetition_penalty: Some(0.0), ..Default::default() }, "`parameters.repetition_penalty`"),
        ];
        for (input, field) in cases {
            let err = sampling(&input, &LORAX).unwrap_err();
            assert!(err.message.starts_with(field), "{}", err.message);
        }
    }

    #[test]
    fn stop_sequences_are_bounded() {
        assert!(stop("stop", vec!["a".into(); 4]).is_ok());
        assert!(stop("stop", vec!["a".into(); 5]).unwrap_err().message.contains("at most 4"));
        assert!(stop("stop", vec![String::new()]).unwrap_err().message.contains("empty"));
        assert!(stop("stop", vec!["x".repeat(300)]).unwrap_err().message.contains("300 bytes"));
    }
}
