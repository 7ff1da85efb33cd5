//! Choosing the next token: greedy, or sampling with temperature, top-k, top-p and a repetition penalty, from a
//! seeded generator so that a request with a seed is reproducible.

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
    /// CTRL-style penalty (> 1 discourages tokens already in the sequence).
    pub repetition_penalty: Option<f32>,
    /// Seed of the random generator.
    pub seed: u64,
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
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    /// The chosen token.
    pub token: u32,
    /// `log p(token)` from the raw logits.
    pub logprob: f32,
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

    /// Picks the next token from `logits` (one row of the vocabulary); `previous` holds the sequence so far.
    pub fn sample(&mut self, logits: &[f32], previous: &[u32]) -> Sampled {
        let logprob_of = |token: u32| log_softmax_at(logits, token as usize);
        let mut scores = logits.to_vec();
        if let Some(penalty) = self.params.repetition_penalty.filter(|p| *p != 1.0) {
            let mut seen = previous.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = if *s > 0.0 { *s / penalty } else { *s * penalty };
                }
            }
        }
        if self.params.is_greedy() {
            let token = argmax(&scores);
            return Sampled { token, logprob: logprob_of(token) };
        }
        let temperature = self.params.temperature.unwrap_or(1.0);
        let mut cand: Vec<(u32, f32)> = scores.iter().enumerate().map(|(i, s)| (i as u32, s / temperature)).collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = self.params.top_k.filter(|&k| k > 0) {
            cand.truncate(k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|(_, s)| (s - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if let Some(top_p) = self.params.top_p.filter(|p| *p > 0.0 && *p < 1.0) {
            let mut acc = 0.0;
            let keep = probs.iter().position(|p| {
                acc += p;
                acc >= top_p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
        }
        let r: f32 = self.rng.random();
        let mut acc = 0.0;
        let idx = probs.iter().position(|p| {
            acc += p;
            r < acc
        });
        let token = cand[idx.unwrap_or(probs.len() - 1)].0;
        Sampled { token, logprob: logprob_of(token) }
    }
}

fn argmax(xs: &[f32]) -> u32 {
    xs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).map_or(0, |(i, _)| i as u32)
}

fn log_softmax_at(logits: &[f32], i: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    logits[i] - lse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_with_its_logprob() {
        let mut s = Sampler::new(SamplingParams::greedy());
        let out = s.sample(&[0.0, 2.0, 1.0], &[]);
        assert_eq!(out.token, 1);
        let expected = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((out.logprob - expected).abs() < 1e-6);
    }

    #[test]
    fn repetition_penalty_changes_the_choice() {
        let params = SamplingParams { repetition_penalty: Some(3.0), ..SamplingParams::greedy() };
        let mut s = Sampler::new(params);
        assert_eq!(s.sample(&[0.0, 2.0, 1.0], &[1]).token, 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_top_k_restricts() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams { temperature: Some(1.0), seed: 7, ..Default::default() };
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..20).map(|_| s.sample(&logits, &[]).token).collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        assert_ne!(run(params.clone()), run(SamplingParams { seed: 8, ..params.clone() }));
        let top1 = run(SamplingParams { top_k: Some(1), ..params.clone() });
        assert!(top1.iter().all(|&t| t == top1[0]));
        let top_p = run(SamplingParams { top_p: Some(0.01), ..params });
        let best = logits.iter().copied().fold(f32::MIN, f32::max);
        assert!(top_p.iter().all(|&t| logits[t as usize] == best), "{top_p:?}");
    }
}
