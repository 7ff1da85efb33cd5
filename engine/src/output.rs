//! A sequence's tokens turned into its text, in one place: incremental detokenization that never splits a
//! character, the end-of-sequence tokens, stop sequences (the text ends before the first one, which is never
//! streamed: text that could be the start of one is held back until it cannot) and `max_new_tokens`.
//! [`TextOutput`] is fed one token at a time and says what text each token releases and when the sequence ends.

use crate::request::FinishReason;
use crate::tokenizer::{TokenStream, Tokenizer};
use crate::ModelConfig;

/// The end-of-sequence tokens of a model: its config's and its tokenizer's.
pub fn eos_tokens(config: &ModelConfig, tokenizer: &Tokenizer) -> Vec<u32> {
    let mut eos = config.eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_id());
    eos.sort_unstable();
    eos.dedup();
    eos
}

/// What one token released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The text to send now (may be empty: part of a character, a special token, or text held back because it
    /// could begin a stop sequence).
    pub text: String,
    /// Set when the sequence has ended, with why.
    pub finish: Option<FinishReason>,
}

/// The text of one sequence as its tokens come.
#[derive(Debug)]
pub struct TextOutput {
    stream: TokenStream,
    text: String,
    emitted: usize,
    generated: usize,
    max_new_tokens: usize,
    stops: Vec<String>,
    eos: Vec<u32>,
}

impl TextOutput {
    /// A sequence that ends at one of `eos`, before one of `stops`, or after `max_new_tokens` tokens.
    pub fn new(eos: Vec<u32>, stops: Vec<String>, max_new_tokens: usize) -> Self {
        Self { stream: TokenStream::new(), text: String::new(), emitted: 0, generated: 0, max_new_tokens, stops, eos }
    }

    /// Takes the next token.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Piece {
        self.generated += 1;
        let mut finish = None;
        if self.eos.contains(&token) {
            finish = Some(FinishReason::Eos);
        } else if !tokenizer.is_special(token) {
            match self.stream.push(tokenizer, token) {
                Ok(Some(piece)) => self.text.push_str(&piece),
                Ok(None) => {}
                Err(e) => tracing::warn!("detokenization failed: {e}"),
            }
        }
        if finish.is_none() {
            if let Some(pos) = first_stop(&self.text, &self.stops, self.emitted) {
                self.text.truncate(pos);
                finish = Some(FinishReason::StopSequence);
            } else if self.generated >= self.max_new_tokens {
                finish = Some(FinishReason::Length);
            }
        }
        if matches!(finish, Some(FinishReason::Length | FinishReason::Eos)) {
            if let Ok(Some(rest)) = self.stream.flush(tokenizer) {
                self.text.push_str(&rest);
            }
        }
        let safe =
            if finish.is_some() { self.text.len() } else { self.text.len() - held_back(&self.text, &self.stops) };
        let text = self.text.get(self.emitted..safe.max(self.emitted)).unwrap_or("").to_string();
        self.emitted = safe.max(self.emitted);
        Piece { text, finish }
    }

    /// Ends the sequence for a reason of its caller's (its output constraint is complete): returns the text not
    /// released yet (held back for a stop sequence that now cannot come, or the end of a character).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> String {
        if let Ok(Some(rest)) = self.stream.flush(tokenizer) {
            self.text.push_str(&rest);
        }
        let rest = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        rest
    }

    /// Ends the sequence between tokens (its output constraint allowed none): the text not released yet is dropped,
    /// so that the whole text is what was streamed.
    pub fn cut(&mut self) {
        self.text.truncate(self.emitted);
    }

    /// The whole text so far (stop sequences and special tokens left out).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Tokens taken.
    pub fn generated(&self) -> usize {
        self.generated
    }
}

/// Byte offset of the earliest stop sequence in `text` that ends after `from` (earlier text was already checked).
fn first_stop(text: &str, stops: &[String], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|stop| {
            let begin = from.saturating_sub(stop.len());
            let begin = (0..=begin).rev().find(|&b| text.is_char_boundary(b)).unwrap_or(0);
            text[begin..].find(stop.as_str()).map(|p| p + begin)
        })
        .min()
}

/// Bytes at the end of `text` that could be the start of a stop sequence, and so are held back.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for stop in stops {
        for (len, _) in stop.char_indices().skip(1) {
            if len > hold && text.ends_with(&stop[..len]) {
                hold = len;
            }
        }
    }
    hold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_are_found_and_prefixes_held() {
        let stops = vec!["###".to_string(), "\nUser:".to_string()];
        assert_eq!(first_stop("abc ### x", &stops, 0), Some(4));
        assert_eq!(first_stop("abc\nUser: hi", &stops, 5), Some(3));
        assert_eq!(first_stop("abc", &stops, 0), None);
        assert_eq!(held_back("answer #", &stops), 1);
        assert_eq!(held_back("answer ##", &stops), 2);
        assert_eq!(held_back("answer\nUs", &stops), 3);
        assert_eq!(held_back("answer", &stops), 0);
    }
}
