//! One step of the batch: the forward pass over every running sequence (decode rows and prompt chunks within the
//! step's token budget), sampling, and the tokens sent; and what happens when a step fails, which is that the
//! sequences at fault fail alone (see [`Scheduler::step`]).

use super::{Scheduler, Seq};
use crate::request::{Event, Finished, Timings, TokenEvent};
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
        let rows = match self.forward(&picked, &chunks, &bank).and_then(|l| Ok(l.to_vec2::<f32>()?)) {
            Ok(rows) => rows,
            Err(e) => {
                self.rollback(&lens);
                let culprits = self.isolate(&picked, &chunks, &bank, &lens, &e);
                return self.remove_failed(culprits);
            }
        };
        EngineStats::add(&self.stats.steps, 1);
        EngineStats::set(&self.stats.batch_size, picked.len() as u64);
        let mut failed = Vec::new();
        let mut ready = Vec::with_capacity(rows.len());
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
            ready.push((i, &row[..]));
        }
        let sampled = sample_rows(&mut self.running, &ready);
        let mut done = Vec::new();
        for (&(i, _), next) in ready.iter().zip(sampled) {
            if self.emit(i, next) {
                done.push(i);
            }
        }
        for (i, e) in failed {
            tracing::warn!(parent: &self.running[i].sub.span, "the request failed alone: {e}");
            let _ = self.running[i].sub.events.send(Err(e));
            done.push(i);
        }
        done.sort_unstable();
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

    fn forward(
        &mut self,
        picked: &[(Option<usize>, usize)],
        chunks: &[usize],
        bank: &AdapterBank,
    ) -> Result<candle_core::Tensor> {
        let mut seqs: Vec<SeqInput<'_>> = Vec::with_capacity(picked.len());
        let mut refs: Vec<Option<&mut Seq>> = self.running.iter_mut().map(Some).collect();
        for &(slot, i) in picked {
            let s = refs[i].take().expect("each sequence once");
            let Seq { cache, sub, next, prefilled, .. } = s;
            let tokens: &[u32] = if chunks[i] > 0 { &sub.prompt[*prefilled..*prefilled + chunks[i]] } else { next };
            seqs.push(SeqInput { tokens, cache, adapter: slot });
        }
        let logits = self.model.forward(&mut seqs, bank, Logits::Last)?;
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
            return Ok(candle_core::Tensor::from_vec(rows, (n, vocab), logits.device())?);
        }
        Ok(logits)
    }

    /// Appends the sampled token `next` to running sequence `i` and sends what it releases; returns whether the
    /// sequence is finished.
    fn emit(&mut self, i: usize, next: Sampled) -> bool {
        let s = &mut self.running[i];
        s.generated.push(next.token);
        s.next = vec![next.token];
        s.first_token.get_or_insert_with(Instant::now);
        EngineStats::add(&self.stats.generated_tokens, 1);
        let piece = s.output.push(&self.tokenizer, next.token);
        let special = self.tokenizer.is_special(next.token);
        let event = TokenEvent { id: next.token, text: piece.text, logprob: next.logprob, special };
        let mut gone = s.sub.events.send(Ok(Event::Token(event))).is_err();
        if let Some(reason) = piece.finish {
            let now = Instant::now();
            let submitted = s.sub.submitted;
            let finished = Finished {
                reason,
                prompt_tokens: s.sub.prompt.len(),
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
            gone = true;
        }
        gone
    }
}

/// Samples the next token of each running sequence `i` in `ready` from its logits row, the rows split across
/// candle's workers (a softmax over the vocabulary per row adds up to a serial stretch of the step otherwise).
fn sample_rows(running: &mut [Seq], ready: &[(usize, &[f32])]) -> Vec<Sampled> {
    struct Job<'a> {
        seq: &'a mut Seq,
        logits: &'a [f32],
        sampled: Option<Sampled>,
    }
    let mut seqs: Vec<Option<&mut Seq>> = running.iter_mut().map(Some).collect();
    let jobs: Vec<Mutex<Job<'_>>> = ready
        .iter()
        .map(|&(i, logits)| Mutex::new(Job { seq: seqs[i].take().expect("each sequence once"), logits, sampled: None }))
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(jobs.len(), |range| {
        for job in &jobs[range] {
            let mut job = job.lock().expect("not poisoned");
            let Job { seq: s, logits, sampled } = &mut *job;
            *sampled = Some(s.sampler.sample(logits, &s.sub.prompt, &s.generated));
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
