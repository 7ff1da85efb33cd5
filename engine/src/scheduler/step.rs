//! One step of the batch: the forward pass over every running sequence (decode rows and prompt chunks within the
//! step's token budget), with the output constraints' masks computed beside it, sampling, and the tokens sent; and
//! what happens when a step fails, which is that the sequences at fault fail alone (see [`Scheduler::step`]).

use super::{Scheduler, Seq};
use crate::constraint::{Guide, Mask, MaskOutcome, Progress};
use crate::request::{Event, FinishReason, Finished, Timings, TokenEvent};
use crate::sampling::Sampled;
use crate::stats::EngineStats;
use crate::{AdapterBank, AdapterId, Error, Logits, Result, SeqInput};
use std::sync::Mutex;
use std::time::Instant;

impl Scheduler {
    /// One forward pass over every running sequence. A failure belongs to the sequences that cause it: a
    /// sequence without room in the model's context, with non-finite logits, or whose rows make the forward pass
    /// fail (found by retrying each alone, after rolling every cache back) ends with its error, and the others go
    /// on with exactly the tokens they would have had. The batch as a whole is never failed.
    pub(super) fn step(&mut self) {
        let bank = match self.residency.bank() {
            Ok(bank) => bank,
            Err(e) => return self.drop_unusable_adapters(&e),
        };
        self.fail_overlong();
        // Sort by adapter slot so rows sharing an adapter are contiguous segments.
        let slot_of = |s: &Seq| s.sub.request.adapter.as_ref().and_then(|id| self.residency.slot(id));
        let mut order: Vec<(Option<usize>, usize)> =
            self.running.iter().enumerate().map(|(i, s)| (slot_of(s), i)).collect();
        order.sort();
        // Token budget: decode rows first, then prompt chunks.
        let decoding = self.running.iter().filter(|s| s.prefilled == s.sub.prompt.len()).count();
        let budget = self.cfg.step_token_budget().saturating_sub(decoding);
        let left: Vec<(Instant, usize)> =
            self.running.iter().map(|s| (s.started, s.sub.prompt.len() - s.prefilled)).collect();
        let chunks = prefill_chunks(&left, budget);
        let picked: Vec<(Option<usize>, usize)> = order
            .into_iter()
            .filter(|&(_, i)| chunks[i] > 0 || self.running[i].prefilled == self.running[i].sub.prompt.len())
            .collect();
        if picked.is_empty() {
            return;
        }
        self.inject_faults();
        let lens: Vec<usize> = self.running.iter().map(|s| s.cache.len()).collect();
        // The constrained rows that sample this step: their guides compute masks on another thread meanwhile.
        let mut guides: Vec<(usize, Guide)> = Vec::new();
        for &(_, i) in &picked {
            let s = &mut self.running[i];
            if s.prefilled + chunks[i] == s.sub.prompt.len() {
                guides.extend(s.sub.guide.take().map(|g| (i, g)));
            }
        }
        let (forward, masked) = std::thread::scope(|scope| {
            let masks = (!guides.is_empty()).then(|| scope.spawn(move || compute_masks(guides)));
            let forward =
                self.forward(&picked, &chunks, &bank).and_then(|(l, scores)| Ok((l.to_vec2::<f32>()?, scores)));
            (forward, masks.map(|m| m.join().expect("masks are computed without panicking")).unwrap_or_default())
        });
        let mut masks: Vec<Option<MaskOutcome>> = vec![None; self.running.len()];
        for (i, guide, mask) in masked {
            let s = &mut self.running[i];
            s.sub.guide = Some(guide);
            let dead_end = self.cfg.faults.dead_end_after.is_some_and(|n| s.generated.len() >= n);
            masks[i] = Some(if dead_end { Err("injected fault: a dead end".into()) } else { mask });
        }
        let rows = match forward {
            Ok((rows, scores)) => {
                for (i, lps) in scores {
                    self.running[i].prompt_logprobs.extend(lps);
                }
                rows
            }
            Err(e) => {
                self.rollback(&lens);
                let culprits = self.isolate(&picked, &chunks, &bank, &lens, &e);
                return self.remove_failed(culprits);
            }
        };
        EngineStats::add(&self.stats.steps, 1);
        EngineStats::add(&self.stats.prefill_tokens, picked.iter().map(|&(_, i)| chunks[i] as u64).sum());
        EngineStats::set(&self.stats.batch_size, picked.len() as u64);
        let mut failed = Vec::new();
        let mut sampling: Vec<(usize, &[f32], Option<MaskOutcome>)> = Vec::new();
        for (row, &(_, i)) in rows.iter().zip(&picked) {
            let s = &mut self.running[i];
            if chunks[i] > 0 {
                s.prefilled += chunks[i];
                if s.prefilled < s.sub.prompt.len() {
                    continue; // more of the prompt to go; these logits are not needed
                }
            }
            if row.iter().any(|x| !x.is_finite()) {
                let e = Error::Generation(
                    "the model's output for this request was not a number (NaN or infinite logits)".into(),
                );
                failed.push((i, e));
                continue;
            }
            sampling.push((i, &row[..], masks[i].take()));
        }
        // A request for n continuations forks when its prompt is prefilled: each one samples from these logits.
        for k in 0..sampling.len() {
            let (i, row, mask) = (sampling[k].0, sampling[k].1, sampling[k].2.clone());
            let forks = self.running[i].forks_left();
            for choice in 1..=forks {
                match self.fork(i, choice) {
                    Ok(seq) => {
                        self.running.push(seq);
                        sampling.push((self.running.len() - 1, row, mask.clone()));
                    }
                    Err(e) => {
                        failed.push((i, e));
                        break;
                    }
                }
            }
        }
        let mut dead_ends = Vec::new();
        let mut ready = Vec::with_capacity(sampling.len());
        for (i, row, mask) in sampling.into_iter().filter(|(i, ..)| !failed.iter().any(|(f, _)| f == i)) {
            match mask {
                Some(Err(reason)) => dead_ends.push((i, reason)),
                Some(Ok(mask)) => ready.push((i, row, Some(mask))),
                None => ready.push((i, row, None)),
            }
        }
        let sampled = sample_rows(&mut self.running, &ready);
        let mut done = Vec::new();
        for (&(i, ..), next) in ready.iter().zip(sampled) {
            if self.emit(i, next) {
                done.push(i);
            }
        }
        for (i, reason) in dead_ends {
            let s = &mut self.running[i];
            tracing::warn!(parent: &s.sub.span, generated = s.generated.len(), "the output constraint ended it: {reason}");
            s.output.cut();
            send_finished(s, FinishReason::Constraint);
            done.push(i);
        }
        for (i, e) in failed {
            tracing::warn!(parent: &self.running[i].sub.span, "the request failed alone: {e}");
            let _ = self.running[i].sub.events.send(Err(e));
            done.push(i);
        }
        done.sort_unstable();
        done.dedup();
        for i in done.into_iter().rev() {
            self.running.swap_remove(i);
        }
    }

    /// Fails, alone, every running sequence whose next token would not fit the model's context (the request
    /// contract keeps prompt plus `max_new_tokens` within it, so this is a guard, not a limit).
    fn fail_overlong(&mut self) {
        let context = self.model.config().max_position_embeddings;
        let over: Vec<(usize, Error)> = (self.running.iter().enumerate())
            .filter_map(|(i, s)| {
                let len = s.sub.prompt.len() + s.generated.len();
                (len > context).then_some((i, Error::SequenceTooLong { len, max: context }))
            })
            .collect();
        self.remove_failed(over);
    }

    /// Sends each `(index, error)` to its sequence and removes those sequences from the batch.
    fn remove_failed(&mut self, mut failed: Vec<(usize, Error)>) {
        failed.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, e) in failed {
            let seq = self.running.swap_remove(i);
            tracing::warn!(parent: &seq.sub.span, "the request failed alone: {e}");
            let _ = seq.sub.events.send(Err(e));
        }
    }

    /// Rolls every running sequence's cache back to `lens` (what it held before a failed step appended to it).
    fn rollback(&mut self, lens: &[usize]) {
        for (s, &len) in self.running.iter_mut().zip(lens) {
            s.cache.truncate(len);
        }
    }

    /// After a failed step: runs each picked sequence alone (rolling it back again) to find the ones whose rows
    /// fail. When none fails alone (memory ran out only together), the newest admission is the one given up: put
    /// back in the queue if it has not streamed a token yet, failed otherwise.
    fn isolate(
        &mut self,
        picked: &[(Option<usize>, usize)],
        chunks: &[usize],
        bank: &AdapterBank,
        lens: &[usize],
        error: &Error,
    ) -> Vec<(usize, Error)> {
        tracing::warn!(batch = picked.len(), "a step failed ({error}); retrying its sequences one at a time");
        let mut culprits = Vec::new();
        for &one in picked {
            if let Err(e) = self.forward(&[one], chunks, bank) {
                culprits.push((one.1, Error::Generation(e.to_string())));
            }
            self.rollback(lens);
        }
        if culprits.is_empty() {
            if let Some(&(_, newest)) = picked.iter().max_by_key(|&&(_, i)| self.running[i].started) {
                if self.running[newest].generated.is_empty() && picked.len() > 1 {
                    let seq = self.running.swap_remove(newest);
                    tracing::warn!(parent: &seq.sub.span, "preempted: back to the queue");
                    self.waiting.push_front(seq.sub);
                } else {
                    culprits.push((newest, Error::Generation(error.to_string())));
                }
            }
        }
        culprits
    }

    /// The bank of resident adapters could not be built: each resident adapter is tried alone, and those that fail
    /// are evicted and their requests (running and waiting) fail with the cause.
    fn drop_unusable_adapters(&mut self, error: &Error) {
        tracing::error!("the adapter bank could not be built: {error}");
        let layers = self.model.config().num_hidden_layers;
        let bad: Vec<(AdapterId, String)> = self
            .residency
            .entries()
            .filter_map(|(id, a)| AdapterBank::new(vec![a.clone()], layers).err().map(|e| (id.clone(), e.to_string())))
            .collect();
        for (id, reason) in &bad {
            self.residency.remove(id);
            self.loader.forget(id);
            let err = || Error::AdapterLoad { id: id.clone(), reason: reason.clone() };
            let failed: Vec<(usize, Error)> = (self.running.iter().enumerate())
                .filter(|(_, s)| s.sub.request.adapter.as_ref() == Some(id))
                .map(|(i, _)| (i, err()))
                .collect();
            self.remove_failed(failed);
            self.fail_waiting(id, reason.clone());
        }
    }

    /// The faults a test asked for (see [`crate::config::Faults`]).
    fn inject_faults(&self) {
        let step = EngineStats::get(&self.stats.steps);
        let faults = &self.cfg.faults;
        if let Some((at, pause)) = faults.stall_at_step {
            if at == step {
                std::thread::sleep(pause);
            }
        }
        if let Some(delay) = faults.step_delay {
            std::thread::sleep(delay);
        }
        if faults.panic_at_step == Some(step) {
            panic!("injected fault at step {step}");
        }
    }

    /// The forward pass over the `picked` rows: the logits after each one's last token, and the log-probabilities
    /// of the prompt tokens of this step's chunks, for the sequences that asked for them (`(index, scores)`).
    fn forward(
        &mut self,
        picked: &[(Option<usize>, usize)],
        chunks: &[usize],
        bank: &AdapterBank,
    ) -> Result<(candle_core::Tensor, PromptScores)> {
        // For each picked row: its tokens in this step, and the prompt tokens they predict when it asked to score
        // its prompt (a chunk's row j predicts prompt token prefilled + j + 1, while there is one).
        let wanted: Vec<(usize, Option<Vec<u32>>)> = (picked.iter())
            .map(|&(_, i)| {
                let s = &self.running[i];
                let scored = chunks[i] > 0 && s.sub.request.prompt_logprobs;
                let end = (s.prefilled + chunks[i] + 1).min(s.sub.prompt.len());
                (chunks[i].max(1), scored.then(|| s.sub.prompt[s.prefilled + 1..end].to_vec()))
            })
            .collect();
        let mode = if wanted.iter().any(|w| w.1.is_some()) { Logits::All } else { Logits::Last };
        let mut seqs: Vec<SeqInput<'_>> = Vec::with_capacity(picked.len());
        let mut refs: Vec<Option<&mut Seq>> = self.running.iter_mut().map(Some).collect();
        for &(slot, i) in picked {
            let s = refs[i].take().expect("each sequence once");
            let Seq { cache, sub, next, prefilled, .. } = s;
            let tokens: &[u32] = if chunks[i] > 0 { &sub.prompt[*prefilled..*prefilled + chunks[i]] } else { next };
            seqs.push(SeqInput { tokens, cache, adapter: slot });
        }
        let out = self.model.forward(&mut seqs, bank, mode)?;
        drop(seqs);
        let (logits, scores) = match mode {
            Logits::Last => (out, Vec::new()),
            Logits::All => split_rows(&out, &wanted, picked)?,
        };
        if let Some(id) = &self.cfg.faults.forward_error_for {
            if picked.iter().any(|&(_, i)| self.running[i].sub.request.adapter.as_ref() == Some(id)) {
                return Err(Error::Generation(format!("injected fault: a step with adapter {id}")));
            }
        }
        if let Some(id) = &self.cfg.faults.nan_logits_for {
            let (n, vocab) = logits.dims2()?;
            let mut rows: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            for (r, &(_, i)) in picked.iter().enumerate() {
                if self.running[i].sub.request.adapter.as_ref() == Some(id) {
                    rows[r * vocab..(r + 1) * vocab].fill(f32::NAN);
                }
            }
            return Ok((candle_core::Tensor::from_vec(rows, (n, vocab), logits.device())?, scores));
        }
        Ok((logits, scores))
    }

    /// Appends the sampled token `next` to running sequence `i` (and to its guide) and sends what it releases;
    /// returns whether the sequence is finished.
    fn emit(&mut self, i: usize, next: Sampled) -> bool {
        let s = &mut self.running[i];
        s.generated.push(next.token);
        s.next = vec![next.token];
        s.first_token.get_or_insert_with(Instant::now);
        EngineStats::add(&self.stats.generated_tokens, 1);
        let mut piece = s.output.push(&self.tokenizer, next.token);
        let special = self.tokenizer.is_special(next.token);
        // A grammar that is complete ends the sequence as its end-of-sequence token would, one step sooner.
        let progress = s.sub.guide.as_mut().map(|g| g.consume(next.token));
        if piece.finish.is_none() {
            match progress {
                Some(Ok(Progress::Complete)) => {
                    piece.text.push_str(&s.output.finish(&self.tokenizer));
                    piece.finish = Some(FinishReason::Eos);
                }
                Some(Err(reason)) => {
                    tracing::warn!(parent: &s.sub.span, "the output constraint refused a token: {reason}");
                    piece.text.push_str(&s.output.finish(&self.tokenizer));
                    piece.finish = Some(FinishReason::Constraint);
                }
                Some(Ok(Progress::Open)) | None => {}
            }
        }
        let event = TokenEvent {
            id: next.token,
            text: piece.text,
            logprob: next.logprob,
            special,
            choice: s.choice,
            top: next.top,
        };
        let mut gone = s.sub.events.send(Ok(Event::Token(event))).is_err();
        if let Some(reason) = piece.finish {
            send_finished(s, reason);
            gone = true;
        }
        gone
    }
}

/// Sends sequence `s`'s [`Finished`] event, ended for `reason`.
fn send_finished(s: &mut Seq, reason: FinishReason) {
    let now = Instant::now();
    let submitted = s.sub.submitted;
    let finished = Finished {
        choice: s.choice,
        reason,
        prompt_tokens: s.sub.prompt.len(),
        prompt_logprobs: std::mem::take(&mut s.prompt_logprobs),
        generated_tokens: s.generated.len(),
        text: s.output.text().to_string(),
        timings: Timings {
            queue: s.started - submitted,
            time_to_first_token: s.first_token.unwrap_or(now) - submitted,
            total: now - submitted,
        },
    };
    tracing::debug!(
        parent: &s.sub.span,
        reason = reason.as_str(),
        generated = finished.generated_tokens,
        ms = finished.timings.total.as_secs_f64() * 1e3,
        "finished"
    );
    let _ = s.sub.events.send(Ok(Event::Finished(finished)));
}

/// The log-probabilities of prompt tokens a step computed: (running index, scores in prompt order).
type PromptScores = Vec<(usize, Vec<f32>)>;

/// From the logits of every token of a step (`[tokens, vocab]`, the picked rows' tokens one after the other, as
/// `wanted` counts them): the rows after each sequence's last token, and the log-probabilities of the prompt
/// tokens `wanted` names, for the sequences that want them.
fn split_rows(
    all: &candle_core::Tensor,
    wanted: &[(usize, Option<Vec<u32>>)],
    picked: &[(Option<usize>, usize)],
) -> Result<(candle_core::Tensor, PromptScores)> {
    let mut last = Vec::with_capacity(wanted.len());
    let mut scores = Vec::new();
    let mut start = 0;
    for (&(len, ref predicted), &(_, i)) in wanted.iter().zip(picked) {
        if let Some(predicted) = predicted {
            let rows = all.narrow(0, start, predicted.len())?.to_vec2::<f32>()?;
            let lps = rows.iter().zip(predicted).map(|(row, &t)| crate::sampling::logprob_of(row, t)).collect();
            scores.push((i, lps));
        }
        start += len;
        last.push((start - 1) as u32);
    }
    let last = candle_core::Tensor::new(last, all.device())?;
    Ok((all.index_select(&last, 0)?, scores))
}

/// Each guide's mask of the tokens allowed next (run beside the forward pass).
fn compute_masks(guides: Vec<(usize, Guide)>) -> Vec<(usize, Guide, MaskOutcome)> {
    guides
        .into_iter()
        .map(|(i, mut guide)| {
            let mask = guide.mask();
            (i, guide, mask)
        })
        .collect()
}

/// Samples the next token of each running sequence `i` in `ready` from its logits row, within its constraint's
/// mask if it has one, the rows split across candle's workers (a softmax over the vocabulary per row adds up to a
/// serial stretch of the step otherwise).
fn sample_rows(running: &mut [Seq], ready: &[(usize, &[f32], Option<Mask>)]) -> Vec<Sampled> {
    struct Job<'a> {
        seq: &'a mut Seq,
        logits: &'a [f32],
        mask: Option<&'a Mask>,
        sampled: Option<Sampled>,
    }
    let mut seqs: Vec<Option<&mut Seq>> = running.iter_mut().map(Some).collect();
    let jobs: Vec<Mutex<Job<'_>>> = ready
        .iter()
        .map(|(i, logits, mask)| {
            let seq = seqs[*i].take().expect("each sequence once");
            Mutex::new(Job { seq, logits, mask: mask.as_ref(), sampled: None })
        })
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(jobs.len(), |range| {
        for job in &jobs[range] {
            let mut job = job.lock().expect("not poisoned");
            let Job { seq: s, logits, mask, sampled } = &mut *job;
            let allowed = mask.map(Mask::words);
            *sampled = Some(s.sampler.sample_within(logits, &s.sub.prompt, &s.generated, allowed));
        }
    });
    jobs.into_iter().map(|j| j.into_inner().expect("not poisoned").sampled.expect("sampled")).collect()
}

/// Prompt tokens each running sequence prefills in this step, given when it was admitted and how many of its prompt
/// tokens are left: the budget goes to the oldest admission first, so that a prompt half prefilled is never
/// overtaken by one admitted after it (whatever the adapter slots that order the batch's rows).
fn prefill_chunks(left: &[(Instant, usize)], mut budget: usize) -> Vec<usize> {
    let mut chunks = vec![0; left.len()];
    let mut by_admission: Vec<usize> = (0..left.len()).collect();
    by_admission.sort_by_key(|&i| (left[i].0, i));
    for i in by_admission {
        let take = left[i].1.min(budget);
        chunks[i] = take;
        budget -= take;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_prefill_budget_goes_to_the_oldest_admission_first() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // Running order as the batch holds it (after swap_remove): admitted at 30, 10, 20, 0 ms; the one at 0 ms
        // is decoding (nothing left).
        let left = [(at(30), 50), (at(10), 7), (at(20), 100), (at(0), 0)];
        assert_eq!(prefill_chunks(&left, 60), vec![0, 7, 53, 0]);
        assert_eq!(prefill_chunks(&left, 200), vec![50, 7, 100, 0]);
        assert_eq!(prefill_chunks(&left, 5), vec![0, 5, 0, 0]);
        assert_eq!(prefill_chunks(&left, 0), vec![0; 4]);
    }
}
