//! Tokenizers: Hugging Face `tokenizer.json` through the tokenizers crate, or the same rebuilt from GGUF metadata
//! (`gpt2` byte-level BPE with the GGUF's pre-tokenizer, `llama` SentencePiece BPE); chat templates rendered with minijinja; and incremental
//! detokenization that never splits a UTF-8 character.

use crate::request::PromptPart;
use crate::{Error, Result};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A model's tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer reading special-token text as plain text: for content inside a template.
    plain: tokenizers::Tokenizer,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    add_bos: bool,
    special: HashSet<u32>,
    chat_template: Option<String>,
    /// Bytes of the vocabulary's longest token string: no token covers more text than that.
    max_token_bytes: usize,
    /// The text of every special added token (`<|im_start|>`, ...).
    special_texts: Vec<String>,
}

/// A tokenizer's parts, before [`Tokenizer::assemble`].
struct Parts {
    inner: tokenizers::Tokenizer,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    add_bos: bool,
    special: HashSet<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab", &self.inner.get_vocab_size(true)).finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// The tokenizer of the model at `path`: `tokenizer.json` (+ `tokenizer_config.json`) in a Hugging Face folder,
    /// or the GGUF's own metadata.
    pub fn for_model(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::from_hf_folder(path);
        }
        let mut file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let content = gguf_file::Content::read(&mut file).map_err(tok_err)?;
        Self::from_gguf(&content)
    }

    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` (chat template, BOS/EOS, add_bos_token).
    pub fn from_hf_folder(dir: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", dir.join("tokenizer.json").display())))?;
        let cfg: serde_json::Value = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(tok_err)?,
            Err(_) => serde_json::Value::Null,
        };
        let token_str = |v: &serde_json::Value| -> Option<String> {
            v.as_str().map(str::to_string).or_else(|| v.get("content").and_then(|c| c.as_str()).map(str::to_string))
        };
        let lookup = |name: Option<String>| name.and_then(|n| inner.token_to_id(&n).map(|id| (id, n)));
        let bos = lookup(token_str(&cfg["bos_token"]));
        let eos = lookup(token_str(&cfg["eos_token"]));
        let add_bos = cfg["add_bos_token"].as_bool().unwrap_or(false);
        let chat_template = cfg["chat_template"].as_str().map(str::to_string);
        let special = inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(id, _)| *id).collect();
        Ok(Self::assemble(Parts { inner, bos, eos, add_bos, special, chat_template }))
    }

    fn assemble(parts: Parts) -> Self {
        let Parts { inner, bos, eos, add_bos, special, chat_template } = parts;
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let max_token_bytes = inner.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1);
        let special_texts =
            inner.get_added_tokens_decoder().values().filter(|t| t.special).map(|t| t.content.clone()).collect();
        Self { inner, plain, bos, eos, add_bos, special, chat_template, max_token_bytes, special_texts }
    }

    /// Rebuilds the tokenizer from GGUF metadata (`tokenizer.ggml.*`), as llama.cpp and transformers do: `gpt2`
    /// byte-level BPE with its merges, or `llama`, SentencePiece BPE with byte fallback (Llama, Mistral), whose
    /// merges come from the pieces' scores as transformers' converter makes them.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let get_str = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
        let get_u32 = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let get_bool = |k: &str| md.get(k).and_then(|v| v.to_bool().ok());
        let strings = |k: &str| -> Result<Vec<String>> {
            let arr = md.get(k).ok_or_else(|| Error::Tokenizer(format!("GGUF has no {k}")))?;
            let arr = arr.to_vec().map_err(tok_err)?;
            arr.iter().map(|v| v.to_string().cloned().map_err(tok_err)).collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v.to_vec().map_err(tok_err)?.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let named = |k: &str| get_u32(k).and_then(|id| tokens.get(id as usize).map(|t| (id, t.clone())));
        let model = get_str("tokenizer.ggml.model").unwrap_or_default();
        let mut inner = match model.as_str() {
            "gpt2" => {
                let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
                    .into_iter()
                    .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
                    .collect();
                byte_level_bpe(&tokens, merges, get_str("tokenizer.ggml.pre").as_deref())?
            }
            "llama" => {
                let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
                    Some(v) => v.to_vec().map_err(tok_err)?.iter().map(|s| s.to_f32().unwrap_or(0.0)).collect(),
                    None => return Err(Error::Tokenizer("GGUF has no tokenizer.ggml.scores".into())),
                };
                let unk = named("tokenizer.ggml.unknown_token_id").map(|(_, t)| t);
                let prefix = get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                sentencepiece_bpe(&tokens, &scores, unk, prefix)?
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "GGUF tokenizer model {other:?} is not supported (\"gpt2\" byte-level BPE and \"llama\" \
                     SentencePiece are); use the model's Hugging Face folder, whose tokenizer.json works for any \
                     tokenizer"
                )))
            }
        };
        // Unknown (2), control (3) and user-defined (4) tokens are matched whole in text, like `<|im_start|>` or
        // `</s>`; unknown and control ones are special (left out of generated text).
        let special_tokens: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| matches!(**t, 2..=4))
            .map(|(tok, _)| AddedToken::from(tok.clone(), true))
            .collect();
        inner.add_special_tokens(&special_tokens);
        let special = tokens.iter().zip(&types).enumerate().filter(|(_, (_, t))| matches!(**t, 2 | 3));
        Ok(Self::assemble(Parts {
            bos: named("tokenizer.ggml.bos_token_id"),
            eos: named("tokenizer.ggml.eos_token_id"),
            add_bos: get_bool("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama"),
            special: special.map(|(i, _)| i as u32).collect(),
            chat_template: get_str("tokenizer.chat_template"),
            inner,
        }))
    }

    /// A stand-in for a model with random weights ([`crate::Model::random`]): `vocab_size` word tokens `t0`, `t1`,
    /// ... split on whitespace, no special tokens, no chat template. Prompts are sent as token ids; generated ids
    /// decode to their names.
    pub fn synthetic(vocab_size: usize) -> Result<Self> {
        let vocab: ahash::AHashMap<String, u32> = (0..vocab_size as u32).map(|i| (format!("t{i}"), i)).collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab)
            .unk_token("t0".into())
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::WhitespaceSplit));
        inner.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::new("##".into(), false)));
        Ok(Self::assemble(Parts {
            inner,
            bos: None,
            eos: None,
            add_bos: false,
            special: HashSet::new(),
            chat_template: None,
        }))
    }

    /// Token ids of `text`; special-token strings in the text are matched whole. With `add_bos`, the model's BOS
    /// is prepended if its config asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        self.encode_parts(&[PromptPart::Template(text.to_string())], add_bos)
    }

    /// Token ids of `parts` one after the other (BOS first, as [`Tokenizer::encode`]): template text with its
    /// special-token strings matched whole, content with them read as plain text, so that content cannot forge
    /// the template's control tokens.
    pub fn encode_parts(&self, parts: &[PromptPart], add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if let (true, true, Some((bos, _))) = (add_bos, self.add_bos, &self.bos) {
            ids.push(*bos);
        }
        // Content without special-token text joins the text around it, so that a prompt tokenizes exactly as its
        // whole text would (a cut can change the tokens at its edges); only content that would forge a control
        // token is tokenized on its own, as plain text.
        let mut run = String::new();
        let flush = |run: &mut String, ids: &mut Vec<u32>| -> Result<()> {
            if !run.is_empty() {
                ids.extend_from_slice(self.inner.encode(run.as_str(), false).map_err(tok_err)?.get_ids());
                run.clear();
            }
            Ok(())
        };
        for part in parts {
            match part {
                PromptPart::Content(text) if self.special_texts.iter().any(|t| text.contains(t.as_str())) => {
                    flush(&mut run, &mut ids)?;
                    ids.extend_from_slice(self.plain.encode(text.as_str(), false).map_err(tok_err)?.get_ids());
                }
                PromptPart::Template(text) | PromptPart::Content(text) => run.push_str(text),
            }
        }
        flush(&mut run, &mut ids)?;
        Ok(ids)
    }

    /// Bytes of the vocabulary's longest token: a text of `n` bytes has at least `n / max_token_bytes()` tokens.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Text of `ids`; special tokens are kept unless `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The tokenizer as Hugging Face's `tokenizer.json` (the grammar compiler reads it).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tok_err)
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The end-of-sequence token, if the tokenizer names one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|(id, _)| *id)
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether the model ships a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The prompt of `messages` in the model's chat template as [`PromptPart`]s: the template's text, and each
    /// message's content as [`PromptPart::Content`], so that special-token text a message carries
    /// (`<|im_start|>system`) is tokenized as plain text and only the template's own markers are control tokens.
    pub fn chat_parts(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<PromptPart>> {
        // Each content is rendered as a marker no template or message can contain, then the text is cut there.
        let nonce: u64 = rand::random();
        let marker = |i: usize| format!("\u{E000}{nonce:016x}:{i}\u{E001}");
        let marked: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage { role: m.role.clone(), content: marker(i) })
            .collect();
        let mut rest = self.apply_chat_template(&marked, add_generation_prompt)?;
        let mut parts = Vec::new();
        let (open, close) = (format!("\u{E000}{nonce:016x}:"), '\u{E001}');
        while let Some(at) = rest.find(&open) {
            let after = &rest[at + open.len()..];
            let end = after.find(close).ok_or_else(|| Error::Template("a content marker was cut".into()))?;
            let index: usize =
                after[..end].parse().map_err(|_| Error::Template("a content marker was altered".into()))?;
            let content = messages.get(index).ok_or_else(|| Error::Template("unknown content marker".into()))?;
            if at > 0 {
                parts.push(PromptPart::Template(rest[..at].to_string()));
            }
            parts.push(PromptPart::Content(content.content.clone()));
            rest = after[end + close.len_utf8()..].to_string();
        }
        if !rest.is_empty() {
            parts.push(PromptPart::Template(rest));
        }
        Ok(parts)
    }

    /// Renders `messages` with the model's chat template (Jinja, as transformers' `apply_chat_template`).
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template =
            self.chat_template.as_deref().ok_or_else(|| Error::Template("the model has no chat template".into()))?;
        let mut env = minijinja::Environment::new();
        // transformers renders chat templates with trim_blocks and lstrip_blocks on.
        let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(syntax.map_err(|e| Error::Template(e.to_string()))?);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).map_err(|e| Error::Template(e.to_string()))?;
        let tmpl = env.get_template("chat").map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => message_values(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_ref().map(|(_, s)| s.as_str()).unwrap_or(""),
            eos_token => self.eos.as_ref().map(|(_, s)| s.as_str()).unwrap_or(""),
        })
        .map_err(|e| Error::Template(e.to_string()))
    }
}

/// GPT-2 style byte-level BPE over `tokens` and `merges`, with the pre-tokenizer GGUF names in `tokenizer.ggml.pre`.
fn byte_level_bpe(
    tokens: &[String],
    merges: Vec<(String, String)>,
    pre: Option<&str>,
) -> Result<tokenizers::Tokenizer> {
    let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tok_err)?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre: PreTokenizerWrapper = match pre {
        // SmolLM splits every digit, then applies GPT-2's byte-level regex.
        Some("smollm") => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        _ => byte_level.into(),
    };
    inner.with_pre_tokenizer(Some(pre));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

/// SentencePiece BPE as transformers' `LlamaConverter` rebuilds it from a `tokenizer.model`: the pieces' merges
/// ordered by score, `<0xNN>` byte fallback for characters outside the vocabulary, spaces as `▁` with one put in
/// front of the text (SentencePiece's dummy prefix) and taken off again when decoding.
fn sentencepiece_bpe(
    tokens: &[String],
    scores: &[f32],
    unk: Option<String>,
    space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    use tokenizers::decoders::{byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as Decoders, strip::Strip};
    use tokenizers::normalizers::{Prepend, Replace, Sequence as Normalizers};
    if scores.len() != tokens.len() {
        return Err(Error::Tokenizer(format!(
            "GGUF has {} tokenizer.ggml.scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges_from_scores(tokens, scores, &vocab);
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).fuse_unk(true).byte_fallback(true);
    if let Some(unk) = unk {
        bpe = bpe.unk_token(unk);
    }
    let mut inner = tokenizers::Tokenizer::new(bpe.build().map_err(tok_err)?);
    let space = Replace::new(" ", "\u{2581}").map_err(tok_err)?;
    let normalizers = match space_prefix {
        true => vec![Prepend::new("\u{2581}".into()).into(), space.into()],
        false => vec![space.into()],
    };
    inner.with_normalizer(Some(Normalizers::new(normalizers)));
    inner.with_decoder(Some(Decoders::new(vec![
        Replace::new("\u{2581}", " ").map_err(tok_err)?.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
        Strip::new(' ', usize::from(space_prefix), 0).into(),
    ])));
    Ok(inner)
}

/// BPE merges from SentencePiece scores (transformers' `SentencePieceExtractor`): every split of a piece into two
/// pieces of the vocabulary is a merge, ranked by the whole piece's score, highest first (ties: the longer left
/// part, then the longer right part first; then the vocabulary's order).
fn merges_from_scores(
    tokens: &[String],
    scores: &[f32],
    vocab: &ahash::AHashMap<String, u32>,
) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, &str, &str)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(f32, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(l, r)| vocab.contains_key(*l) && vocab.contains_key(*r))
            .map(|(l, r)| (score, l, r))
            .collect();
        local.sort_by_key(|&(_, l, r)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    // Python's stable `sorted(key=(score, len(l), len(r)), reverse=True)`: stable, so equal keys keep their order.
    merges.sort_by(|a, b| {
        let key = |m: &(f32, &str, &str)| (m.0, m.1.chars().count(), m.2.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(_, l, r)| (l.to_string(), r.to_string())).collect()
}

/// Chat messages as template values (`message['role']`, `message.content`).
fn message_values(messages: &[ChatMessage]) -> minijinja::Value {
    let items: Vec<minijinja::Value> = messages
        .iter()
        .map(|m| {
            let map: std::collections::BTreeMap<&str, String> =
                [("role", m.role.clone()), ("content", m.content.clone())].into_iter().collect();
            minijinja::Value::from(map)
        })
        .collect();
    minijinja::Value::from(items)
}

/// Turns a growing list of token ids into text pieces. A piece is released only once it decodes to complete
/// characters, so multi-byte characters split across tokens are never cut (the TGI/candle `TokenOutputStream`).
#[derive(Debug, Default)]
pub struct TokenStream {
    tokens: Vec<u32>,
    prev: usize,
    current: usize,
}

impl TokenStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id` and returns the new text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        let before = tokenizer.decode(&self.tokens[self.prev..self.current], false)?;
        self.tokens.push(id);
        let after = tokenizer.decode(&self.tokens[self.prev..], false)?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let piece = after[before.len()..].to_string();
            self.prev = self.current;
            self.current = self.tokens.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }

    /// Whatever text is still held back (an incomplete character at the end of generation).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let before = tokenizer.decode(&self.tokens[self.prev..self.current], false)?;
        let after = tokenizer.decode(&self.tokens[self.prev..], false)?;
        self.prev = self.current;
        self.current = self.tokens.len();
        Ok((after.len() > before.len()).then(|| after[before.len()..].to_string()))
    }
}
