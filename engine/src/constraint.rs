//! Constrained decoding with llguidance (the library vLLM, SGLang, llama.cpp and mistral.rs use): a request may
//! ask that its output match a JSON schema, any JSON object, a regular expression, one of a list of strings or a
//! Lark grammar. The grammar is compiled on the caller's side ([`Grammars::compile`], part of the request contract:
//! a grammar that does not compile is refused naming the problem); on the engine thread each constrained sequence
//! keeps a [`Guide`], whose mask of allowed tokens is computed while the step's forward pass runs and applied to
//! its logits before sampling. Constrained rows share the batch with free rows and every adapter.

use crate::request::{Constraint, Field};
use crate::{Error, Result, Tokenizer};
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, ParserFactory};
use std::sync::{Arc, OnceLock};

/// Longest grammar source (schema, regex, Lark text or choices), in bytes.
pub const MAX_GRAMMAR_BYTES: usize = 64 << 10;
/// Most strings of a [`Constraint::Choice`].
pub const MAX_CHOICE_STRINGS: usize = 1024;

/// Bytes of a constraint's source: bounds the compiler's work before it runs.
fn source_bytes(constraint: &Constraint) -> usize {
    match constraint {
        Constraint::JsonObject => 0,
        Constraint::JsonSchema(schema) => schema.to_string().len(),
        Constraint::Regex(rx) | Constraint::Lark(rx) => rx.len(),
        Constraint::Choice(items) => items.iter().map(String::len).sum(),
    }
}

/// llguidance's grammar for a constraint, or its refusal.
fn grammar(constraint: &Constraint) -> Result<TopLevelGrammar> {
    let invalid = |reason: String| Error::Invalid { field: Field::Constraint, reason };
    let bytes = source_bytes(constraint);
    if bytes > MAX_GRAMMAR_BYTES {
        return Err(invalid(format!("has {bytes} bytes, at most {MAX_GRAMMAR_BYTES} are allowed")));
    }
    Ok(match constraint {
        Constraint::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"}))),
        Constraint::JsonSchema(schema) => {
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(invalid(format!("the JSON schema must be an object, got {schema}")));
            }
            TopLevelGrammar::from_json_schema(compact(schema.clone()))
        }
        Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
        Constraint::Choice(items) => {
            if items.is_empty() || items.len() > MAX_CHOICE_STRINGS {
                let n = items.len();
                return Err(invalid(format!("must list between 1 and {MAX_CHOICE_STRINGS} choices, got {n}")));
            }
            if items.iter().any(String::is_empty) {
                return Err(invalid("a choice must not be empty".into()));
            }
            // Lark string literals take JSON's escapes.
            let alternatives: Vec<String> =
                items.iter().map(|s| serde_json::Value::from(s.as_str()).to_string()).collect();
            TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
        }
        Constraint::Lark(source) => TopLevelGrammar::from_lark(source.clone()),
    })
}

/// `schema`, written compact unless it sets llguidance's options itself.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let serde_json::Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}

/// The engine's grammar compiler: llguidance's parser factory over the model's vocabulary, built on first use
/// (it indexes every token's bytes, which a model that never sees a constrained request does not need).
pub(crate) struct Grammars {
    tokenizer: Tokenizer,
    vocab_size: usize,
    eos: Vec<u32>,
    factory: OnceLock<std::result::Result<Arc<ParserFactory>, String>>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("vocab_size", &self.vocab_size).finish_non_exhaustive()
    }
}

impl Grammars {
    /// A compiler for a model of `vocab_size` logits, whose sequences end at `eos`.
    pub(crate) fn new(tokenizer: Tokenizer, vocab_size: usize, eos: Vec<u32>) -> Self {
        Self { tokenizer, vocab_size, eos, factory: OnceLock::new() }
    }

    fn factory(&self) -> Result<&Arc<ParserFactory>> {
        let built = self.factory.get_or_init(|| {
            let started = std::time::Instant::now();
            let factory = self.build().map_err(|e| {
                tracing::warn!("constrained output is not available: {e}");
                e
            })?;
            tracing::info!(ms = started.elapsed().as_secs_f64() * 1e3, "grammar compiler ready");
            Ok(Arc::new(factory))
        });
        built.as_ref().map_err(|reason| Error::Invalid {
            field: Field::Constraint,
            reason: format!("is not available with this model: {reason}"),
        })
    }

    fn build(&self) -> std::result::Result<ParserFactory, String> {
        // toktrie_hf_tokenizers reads a Hugging Face tokenizer; ours hands it over as its JSON.
        let json = self.tokenizer.to_json().map_err(|e| e.to_string())?;
        let mut bytes = toktrie_hf_tokenizers::ByteTokenizer::from_json_bytes(json.as_bytes())
            .map_err(|e| format!("its tokenizer cannot be indexed by bytes ({e})"))?;
        let eos: Vec<u32> = self.eos.iter().copied().filter(|&t| (t as usize) < self.vocab_size).collect();
        if !eos.is_empty() {
            bytes.set_eos_tokens(&eos);
        }
        let env = bytes.into_tok_env(Some(self.vocab_size)).map_err(|e| e.to_string())?;
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits { verbose_errors: false, ..ParserLimits::default() };
        Ok(factory)
    }

    /// Compiles `constraint` for one request, or refuses it naming the problem.
    pub(crate) fn compile(&self, constraint: &Constraint) -> Result<Guide> {
        let grammar = grammar(constraint)?;
        let factory = self.factory()?;
        let parser = factory.create_parser(grammar).map_err(|e| Error::Invalid {
            field: Field::Constraint,
            reason: format!("cannot be compiled: {}", short(&e.to_string())),
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::Invalid { field: Field::Constraint, reason: format!("cannot be used: {}", short(&e)) });
        }
        Ok(Guide { matcher, vocab_size: self.vocab_size })
    }
}

/// The first line of an llguidance error, within 300 bytes.
fn short(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message);
    match line.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_string(),
    }
}

/// Where a constrained sequence stands after a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// More tokens may follow.
    Open,
    /// The grammar is complete: nothing but the end may follow.
    Complete,
}

/// One sequence's constraint, on the engine thread.
#[derive(Clone)]
pub(crate) struct Guide {
    matcher: Matcher,
    vocab_size: usize,
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guide").field("stopped", &self.matcher.is_stopped()).finish_non_exhaustive()
    }
}

/// The tokens a [`Guide`] allows next, as a bitset of 32-bit words (token `t` is bit `t % 32` of word `t / 32`).
#[derive(Clone, Debug)]
pub(crate) struct Mask(SimpleVob);

/// A guide's mask, or why there is none (the grammar dead-ended, or the matcher failed).
pub(crate) type MaskOutcome = std::result::Result<Mask, String>;

impl Mask {
    /// The words of the bitset.
    pub(crate) fn words(&self) -> &[u32] {
        self.0.as_slice()
    }
}

impl Guide {
    /// The tokens allowed next; an error when none is (the grammar dead-ended) or the matcher failed.
    pub(crate) fn mask(&mut self) -> MaskOutcome {
        let mask = self.matcher.compute_mask_or_eos().map_err(|e| short(&e.to_string()))?;
        // A word at a time; bit by bit only for a mask wider than the model's vocabulary (tokens past it do not
        // count: they cannot be sampled).
        let none = if mask.len() <= self.vocab_size {
            mask.is_zero()
        } else {
            (0..self.vocab_size as u32).all(|t| !mask.is_allowed(t))
        };
        if none {
            return Err("the output constraint allows no next token".into());
        }
        Ok(Mask(mask))
    }

    /// Takes the sampled token.
    pub(crate) fn consume(&mut self, token: u32) -> std::result::Result<Progress, String> {
        self.matcher.consume_token(token).map_err(|e| short(&e.to_string()))?;
        Ok(if self.matcher.is_stopped() { Progress::Complete } else { Progress::Open })
    }
}
