//! Choosing the next token: greedy, or sampling with temperature, top-k and top-p, from a seeded generator so that
//! a request with a seed is reproducible; the scores first adjusted by the repetition penalty (CTRL), OpenAI's
//! presence and frequency penalties, a logit bias and an output constraint's mask of allowed tokens.

use crate::kernel::{exp_shifted, sum_exp_shifted};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick tokens. `temperature == 0` (or `None`) is greedy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `None` or `0` picks the most likely token.
    pub temperature: Option<f32>,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// CTRL-style penalty (> 1 discourages tokens already in the sequence, prompt included).
    pub repetition_penalty: Option<f32>,
    /// OpenAI's presence penalty: subtracted once from the score of every token generated so far (-2 ..= 2).
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted from a token's score once for each time it was generated (-2 ..= 2).
    pub frequency_penalty: f32,
    /// Added to these tokens' scores before choosing (OpenAI's `logit_bias`: -100 bans a token, 100 forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the random generator.
    pub seed: u64,
    /// Report this many most likely tokens with each chosen one (OpenAI's `top_logprobs`, 0 ..= 20).
    pub top_logprobs: usize,
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Whether this picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_none_or(|t| t <= 0.0)
    }
}

/// A token and its log-probability under the model's (unprocessed) distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The chosen token.
    pub token: u32,
    /// `log p(token)` from the raw logits.
    pub logprob: f32,
    /// The [`SamplingParams::top_logprobs`] most likely tokens under the raw logits, most likely first, with their
    /// log-probabilities (empty unless asked for).
    pub top: Vec<(u32, f32)>,
}

/// Per-sequence sampler state.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// Picks the next token from `logits` (one row of the vocabulary), given the sequence so far: its `prompt` and
    /// the tokens `generated` after it. The log-probability reported is the token's under the raw logits.
    ///
    /// Without top-p nothing is sorted: top-k is a selection, and the draw walks the kept tokens in any order (the
    /// distribution is the same). Top-p sorts only the head of the distribution that holds the nucleus.
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], generated: &[u32]) -> Sampled {
        self.sample_within(logits, prompt, generated, None)
    }

    /// [`Sampler::sample`] among the tokens `allowed` only, when set: a bitset of 32-bit words (token `t` is bit
    /// `t % 32` of word `t / 32`), an output constraint's mask, which must allow at least one token.
    pub fn sample_within(
        &mut self,
        logits: &[f32],
        prompt: &[u32],
        generated: &[u32],
        allowed: Option<&[u32]>,
    ) -> Sampled {
        let lse = log_sum_exp(logits);
        let top = top_logprobs(logits, self.params.top_logprobs, lse);
        let done = |token: u32| Sampled { token, logprob: logits[token as usize] - lse, top };
        let adjusted = self.adjust(logits, prompt, generated, allowed);
        let scores = adjusted.as_deref().unwrap_or(logits);
        if self.params.is_greedy() {
            return done(argmax(scores));
        }
        let temperature = self.params.temperature.unwrap_or(1.0);
        // (token, score / temperature), then (token, unnormalised probability).
        let mut cand: Vec<(u32, f32)> = scores.iter().enumerate().map(|(i, s)| (i as u32, s / temperature)).collect();
        if let Some(k) = self.params.top_k.filter(|&k| k > 0 && k < cand.len()) {
            cand.select_nth_unstable_by(k - 1, descending);
            cand.truncate(k);
        }
        let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let mut weights: Vec<f32> = cand.iter().map(|c| c.1).collect();
        exp_shifted(&mut weights, max);
        cand.iter_mut().zip(weights).for_each(|(c, w)| c.1 = w);
        if let Some(top_p) = self.params.top_p.filter(|p| *p > 0.0 && *p < 1.0) {
            keep_nucleus(&mut cand, top_p);
        }
        let sum: f32 = cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * sum;
        let token = cand
            .iter()
            .find(|c| {
                r -= c.1;
                r < 0.0
            })
            .or(cand.last())
            .map_or(0, |c| c.0);
        done(token)
    }
}

impl Sampler {
    /// The scores after the penalties and the bias, as vLLM and transformers apply them (repetition penalty over
    /// prompt and output, presence and frequency penalties over the output only, then the bias), and the tokens
    /// not `allowed` ruled out, or `None` when the request asks for none of that.
    fn adjust(&self, logits: &[f32], prompt: &[u32], generated: &[u32], allowed: Option<&[u32]>) -> Option<Vec<f32>> {
        let p = &self.params;
        let repetition = p.repetition_penalty.filter(|r| *r != 1.0);
        let penalties = p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        if repetition.is_none() && !penalties && p.logit_bias.is_empty() && allowed.is_none() {
            return None;
        }
        let mut scores = logits.to_vec();
        if let Some(penalty) = repetition {
            let mut seen = [prompt, generated].concat();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = if *s > 0.0 { *s / penalty } else { *s * penalty };
                }
            }
        }
        if penalties && !generated.is_empty() {
            let mut counted = generated.to_vec();
            counted.sort_unstable();
            for run in counted.chunk_by(|a, b| a == b) {
                if let Some(s) = scores.get_mut(run[0] as usize) {
                    *s -= p.presence_penalty + p.frequency_penalty * run.len() as f32;
                }
            }
        }
        for &(token, bias) in &p.logit_bias {
            if let Some(s) = scores.get_mut(token as usize) {
                *s += bias;
            }
        }
        if let Some(words) = allowed {
            for (t, s) in scores.iter_mut().enumerate() {
                if words.get(t / 32).is_none_or(|w| w >> (t % 32) & 1 == 0) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
        Some(scores)
    }
}

fn descending(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1)
}

/// Keeps the smallest set of most likely candidates (token, unnormalised probability) whose mass reaches `top_p` of
/// the total, most likely first. It sorts the 64 most likely, then 512, ..., until they hold the nucleus: a full
/// sort of the vocabulary only for a very flat distribution.
fn keep_nucleus(cand: &mut Vec<(u32, f32)>, top_p: f32) {
    let target = top_p * cand.iter().map(|c| c.1).sum::<f32>();
    let mut head = cand.len().min(64);
    loop {
        if head < cand.len() {
            cand.select_nth_unstable_by(head - 1, descending);
        }
        cand[..head].sort_unstable_by(descending);
        let mut acc = 0.0;
        if let Some(i) = cand[..head].iter().position(|c| {
            acc += c.1;
            acc >= target
        }) {
            cand.truncate(i + 1);
            return;
        }
        if head == cand.len() {
            return; // rounding left the sum just short of the target: keep everything
        }
        head = (head * 8).min(cand.len());
    }
}

fn argmax(xs: &[f32]) -> u32 {
    xs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).map_or(0, |(i, _)| i as u32)
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    sum_exp_shifted(logits, max).ln() + max
}

/// The `n` most likely tokens under `logits` (whose log-sum-exp is `lse`), most likely first (ties by lower id).
fn top_logprobs(logits: &[f32], n: usize, lse: f32) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let by_score = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let n = n.min(all.len());
    if n < all.len() {
        all.select_nth_unstable_by(n - 1, by_score);
        all.truncate(n);
    }
    all.sort_unstable_by(by_score);
    all.into_iter().map(|(t, l)| (t, l - lse)).collect()
}

/// `log p(token)` under `logits`.
pub(crate) fn logprob_of(logits: &[f32], token: u32) -> f32 {
    logits[token as usize] - log_sum_exp(logits)
}

#[cfg(test)]
fn log_softmax_at(logits: &[f32], i: usize) -> f32 {
    logprob_of(logits, i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_with_its_logprob() {
        let mut s = Sampler::new(SamplingParams::greedy());
        let out = s.sample(&[0.0, 2.0, 1.0], &[], &[]);
        assert_eq!(out.token, 1);
        let expected = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((out.logprob - expected).abs() < 1e-6);
    }

    #[test]
    fn repetition_penalty_changes_the_choice() {
        let params = SamplingParams { repetition_penalty: Some(3.0), ..SamplingParams::greedy() };
        let mut s = Sampler::new(params);
        assert_eq!(s.sample(&[0.0, 2.0, 1.0], &[1], &[]).token, 2);
    }

    #[test]
    fn presence_and_frequency_penalties_count_the_generated_tokens_only() {
        let logits = [2.0f32, 1.5, 0.0];
        let greedy = |presence_penalty, frequency_penalty, prompt: &[u32], generated: &[u32]| {
            let params = SamplingParams { presence_penalty, frequency_penalty, ..SamplingParams::greedy() };
            Sampler::new(params).sample(&logits, prompt, generated)
        };
        // Token 0 was generated twice: 2.0 - 2 * 0.2 = 1.6 still beats 1.5; 2.0 - 2 * 0.5 = 1.0 does not.
        assert_eq!(greedy(0.0, 0.2, &[], &[0, 2, 0]).token, 0);
        assert_eq!(greedy(0.0, 0.5, &[], &[0, 2, 0]).token, 1);
        // Presence counts once, however often: 2.0 - 0.6 = 1.4.
        assert_eq!(greedy(0.6, 0.0, &[], &[0]).token, 1);
        assert_eq!(greedy(0.4, 0.0, &[], &[0, 0, 0]).token, 0);
        // The prompt is not penalised; a negative penalty encourages repeats.
        assert_eq!(greedy(1.0, 1.0, &[0, 0], &[]).token, 0);
        assert_eq!(greedy(-1.0, 0.0, &[], &[1]).token, 1);
        // The log-probability stays the raw logits'.
        let raw = log_softmax_at(&logits, 1);
        assert_eq!(greedy(0.0, 0.5, &[], &[0, 2, 0]).logprob, raw);
    }

    #[test]
    fn a_logit_bias_bans_or_forces_tokens_when_sampling_too() {
        let logits: Vec<f32> = (0..20).map(|i| (i % 5) as f32 * 0.5).collect();
        let draws = |logit_bias: Vec<(u32, f32)>| {
            let params = SamplingParams { temperature: Some(1.0), seed: 11, logit_bias, ..Default::default() };
            let mut s = Sampler::new(params);
            (0..200).map(|_| s.sample(&logits, &[], &[]).token).collect::<Vec<_>>()
        };
        let free = draws(vec![]);
        let banned: Vec<u32> = (0..20).filter(|t| t % 5 == 4).collect();
        assert!(free.iter().any(|t| banned.contains(t)), "the likeliest tokens come up without a bias");
        let with_ban = draws(banned.iter().map(|&t| (t, -100.0)).collect());
        assert!(with_ban.iter().all(|t| !banned.contains(t)), "{with_ban:?}");
        assert!(draws(vec![(7, 100.0)]).iter().all(|&t| t == 7));
        let greedy = SamplingParams { logit_bias: vec![(0, 3.0)], ..SamplingParams::greedy() };
        assert_eq!(Sampler::new(greedy).sample(&logits, &[], &[]).token, 0, "0 + 3 beats 2");
    }

    #[test]
    fn a_mask_keeps_only_the_allowed_tokens_and_the_raw_logprob() {
        let logits: Vec<f32> = (0..70).map(|i| (i % 9) as f32 * 0.4).collect();
        // Tokens 3, 40 and 65 allowed: bits 3 of word 0, 8 of word 1, 1 of word 2.
        let words = [1u32 << 3, 1 << 8, 1 << 1];
        let allowed = [3u32, 40, 65];
        for params in
            [SamplingParams::greedy(), SamplingParams { temperature: Some(1.5), seed: 5, ..Default::default() }]
        {
            let mut s = Sampler::new(params.clone());
            let picks: Vec<u32> =
                (0..300).map(|_| s.sample_within(&logits, &[], &[], Some(&words[..])).token).collect();
            assert!(picks.iter().all(|t| allowed.contains(t)), "{params:?}: {picks:?}");
            if params.is_greedy() {
                // 40 % 9 = 4 beats 3 and 65 % 9 = 2.
                assert!(picks.iter().all(|&t| t == 40));
            } else {
                assert!(allowed.iter().all(|t| picks.contains(t)), "each allowed token comes up");
            }
        }
        let out = Sampler::new(SamplingParams::greedy()).sample_within(&logits, &[], &[], Some(&words[..]));
        assert_eq!(out.logprob, log_softmax_at(&logits, 40), "the log-probability is the model's, unmasked");
    }

    #[test]
    fn top_logprobs_are_the_most_likely_tokens_in_order() {
        let logits = [0.5f32, 3.0, -1.0, 3.0, 2.0];
        let params = SamplingParams { top_logprobs: 3, ..SamplingParams::greedy() };
        let out = Sampler::new(params).sample(&logits, &[], &[]);
        let ids: Vec<u32> = out.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 4], "ties by the lower id");
        for (t, lp) in &out.top {
            assert!((lp - log_softmax_at(&logits, *t as usize)).abs() < 1e-6);
        }
        assert_eq!(out.token, 1);
        assert!(Sampler::new(SamplingParams::greedy()).sample(&logits, &[], &[]).top.is_empty());
        let all = SamplingParams { top_logprobs: 20, ..SamplingParams::greedy() };
        assert_eq!(Sampler::new(all).sample(&logits, &[], &[]).top.len(), 5, "no more than the vocabulary");
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_top_k_restricts() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams { temperature: Some(1.0), seed: 7, ..Default::default() };
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..20).map(|_| s.sample(&logits, &[], &[]).token).collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        assert_ne!(run(params.clone()), run(SamplingParams { seed: 8, ..params.clone() }));
        let top1 = run(SamplingParams { top_k: Some(1), ..params.clone() });
        assert!(top1.iter().all(|&t| t == top1[0]));
        let top_p = run(SamplingParams { top_p: Some(0.01), ..params });
        let best = logits.iter().copied().fold(f32::MIN, f32::max);
        assert!(top_p.iter().all(|&t| logits[t as usize] == best), "{top_p:?}");
    }

    #[test]
    fn draws_follow_the_softmax_and_top_k_keeps_the_best() {
        let logits = [1.0f32, 0.0, 2.0, -1.0];
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        let draws = 40_000;
        for (top_k, kept) in [(None, vec![0, 1, 2, 3]), (Some(2), vec![0, 2])] {
            let params = SamplingParams { temperature: Some(1.0), top_k, seed: 3, ..Default::default() };
            let mut s = Sampler::new(params);
            let mut counts = [0usize; 4];
            (0..draws).for_each(|_| counts[s.sample(&logits, &[], &[]).token as usize] += 1);
            let z_kept: f32 = kept.iter().map(|&t| logits[t].exp()).sum();
            for t in 0..4 {
                let expected = if kept.contains(&t) { logits[t].exp() / z_kept } else { 0.0 };
                let seen = counts[t] as f32 / draws as f32;
                assert!((seen - expected).abs() < 0.01, "top_k {top_k:?} token {t}: {seen} vs {expected}");
            }
            assert!(z_kept <= z);
        }
    }

    #[test]
    fn the_nucleus_equals_a_full_sort() {
        // Flat and peaked distributions over 5000 tokens, so that the nucleus sometimes needs more than one round.
        for (seed, spread) in [(1u64, 0.5f32), (2, 4.0), (3, 12.0)] {
            let mut rng = StdRng::seed_from_u64(seed);
            let weights: Vec<(u32, f32)> = (0..5000).map(|i| (i, (rng.random::<f32>() * spread).exp())).collect();
            for top_p in [0.05, 0.5, 0.9, 0.999] {
                let mut ours = weights.clone();
                keep_nucleus(&mut ours, top_p);
                let mut all = weights.clone();
                all.sort_unstable_by(descending);
                let total: f32 = weights.iter().map(|c| c.1).sum(); // summed in the same order as ours
                let mut acc = 0.0;
                let n = all.iter().position(|c| {
                    acc += c.1;
                    acc >= top_p * total
                });
                let expected: Vec<u32> = all[..n.map_or(all.len(), |i| i + 1)].iter().map(|c| c.0).collect();
                let got: Vec<u32> = ours.iter().map(|c| c.0).collect();
                assert!(got == expected, "seed {seed}, top_p {top_p}: {} kept, {} expected", got.len(), expected.len());
            }
        }
    }
}
