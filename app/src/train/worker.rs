//! The training workers: threads of their own that take queued jobs from the database (any replica's), train them
//! in a rayon pool of `--train-threads` threads at the lowest CPU priority (the engine's batching loop keeps the
//! other cores, and wins any core both want: [`training_pool`]), write each
//! step's point of the loss curve to the job's row, save the adapter into the folder the engine reads
//! `trained/<job>` from, and score the held-out split, base model against the adapter, through the engine.
//! A cancel is seen at the next step: the row stops matching `running` (see [`store`]).

use super::store::{self, Claimed};
use super::types::{adapter_id, DataSource, Point, Score};
use super::TaskLab;
use crate::context::EngineSlot;
use crate::db::Db;
use anyhow::{bail, Context};
use candle_core::DType;
use engine::train::{Example, LoraShape, TrainConfig, TrainRun};
use engine::{AdapterId, Event, GenerateRequest, Module, Prompt, SamplingParams};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often an idle worker looks for queued jobs another replica stored (a job stored here wakes it at once).
const POLL: Duration = Duration::from_secs(2);
/// Held-out examples scored at once (each as two requests: base and adapter), so that scoring takes a few of the
/// engine's batch slots, not all of them.
const SCORE_CHUNK: usize = 4;

/// Training's settings; each is a `loraland serve` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainSettings {
    /// Jobs trained at once.
    pub workers: usize,
    /// Compute threads the training jobs share.
    pub threads: usize,
    /// Largest upload, in bytes.
    pub max_upload_bytes: usize,
    /// Most examples in an upload.
    pub max_examples: usize,
    /// Most optimizer steps a job may ask for.
    pub max_steps: usize,
    /// Jobs one session may have queued or running.
    pub jobs_per_session: usize,
    /// Jobs one session may keep, whatever their state (each finished one holds an adapter on disk).
    pub kept_per_session: usize,
    /// Jobs queued on the whole server (every session's, every replica's): past it new jobs wait outside.
    pub max_queued: usize,
    /// Synthetic training examples generated for a job on a task's data.
    pub synthetic_examples: usize,
    /// Held-out examples (the upload's tail, or a generated test split).
    pub held_out: usize,
    /// Longest example in tokens; longer ones are skipped.
    pub seq_len: usize,
    /// Measure the held-out loss every this many steps (and at the end).
    pub eval_every: usize,
    /// Sleep this long after every step: a slow trainer, so that browser tests see the curve grow (tests only).
    pub step_delay: Option<Duration>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            workers: 1,
            threads: (cores / 2).max(1),
            max_upload_bytes: 512 << 10,
            max_examples: 5000,
            max_steps: 500,
            jobs_per_session: 2,
            kept_per_session: 10,
            max_queued: 16,
            synthetic_examples: 1000,
            held_out: 32,
            seq_len: 256,
            eval_every: 10,
            step_delay: None,
        }
    }
}

/// The process's training service: what the routes need to queue jobs and serve their adapters.
#[derive(Clone)]
pub struct Training(Arc<Inner>);

struct Inner {
    settings: TrainSettings,
    model: PathBuf,
    dir: PathBuf,
    lab: Arc<dyn TaskLab>,
    /// Jobs queued here and not yet looked for, and the workers waiting for one.
    wake: (std::sync::Mutex<usize>, std::sync::Condvar),
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Training {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Training").field("settings", &self.0.settings).field("dir", &self.0.dir).finish()
    }
}

/// The rayon pool training computes in: `threads` threads (at least one), each at the lowest CPU priority (nice 19
/// on Linux, where the nice value is a thread's own), so that when serving and training want the same core the
/// scheduler gives it to serving (a nice-19 thread weighs 15 against a nice-0 thread's 1024), and training takes
/// only what serving leaves. `loraland bench load --while-training` measures the time to first token with it.
pub fn training_pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("train-{i}"))
        .start_handler(|_| lowest_priority())
        .build()
        .context("cannot start the training threads")
}

/// Tells the engine (once loaded) that `trained/<job>`'s files changed or are gone.
fn discard(engine: &EngineSlot, job: &str) {
    let Some(engine) = engine.get() else { return };
    let sent = AdapterId::new(&adapter_id(job))
        .map_err(|e| e.to_string())
        .and_then(|id| engine.discard_adapter(id).map_err(|e| e.to_string()));
    if let Err(e) = sent {
        tracing::warn!(job, "cannot drop the engine's copies of the adapter: {e}");
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lowest_priority() {
    // SAFETY: setpriority only reads its arguments; `gettid` names the calling thread.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if done != 0 {
        tracing::warn!("cannot lower a training thread's priority: {}", std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn lowest_priority() {}

/// How a job ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Cancelled,
}

impl Training {
    /// Training of the model at `model` into adapter folders under `dir` (created if missing).
    pub fn new(model: PathBuf, dir: PathBuf, lab: Arc<dyn TaskLab>, settings: TrainSettings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let pool = training_pool(settings.threads)?;
        let wake = Default::default();
        Ok(Self(Arc::new(Inner { settings, model, dir, lab, wake, pool })))
    }

    /// Starts the workers; each stops once every clone of this service is gone (the server has stopped).
    pub fn start(&self, db: Db, engine: EngineSlot) {
        let runtime = tokio::runtime::Handle::current();
        for i in 0..self.0.settings.workers {
            let (me, db, engine, runtime) = (Arc::downgrade(&self.0), db.clone(), engine.clone(), runtime.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("train-worker-{i}"))
                .spawn(move || Self::work(&me, &db, &engine, &runtime));
            if let Err(e) = spawned {
                tracing::error!("cannot start training worker {i}: {e}");
            }
        }
    }

    /// The settings.
    pub fn settings(&self) -> &TrainSettings {
        &self.0.settings
    }

    /// The lab's view of the tasks.
    pub fn lab(&self) -> &dyn TaskLab {
        self.0.lab.as_ref()
    }

    /// Tells a worker that a job was queued.
    pub fn wake(&self) {
        let (queued, cv) = &self.0.wake;
        *queued.lock().expect("not poisoned") += 1;
        cv.notify_one();
    }

    /// Waits until a job is queued here, or [`POLL`] has passed.
    fn wait(&self) {
        let (queued, cv) = &self.0.wake;
        let guard = queued.lock().expect("not poisoned");
        let (mut guard, _) = cv.wait_timeout_while(guard, POLL, |n| *n == 0).expect("not poisoned");
        *guard = guard.saturating_sub(1);
    }

    /// The folder of job `id`'s adapter (there once the job is done).
    pub fn adapter_dir(&self, id: &str) -> PathBuf {
        self.0.dir.join(id)
    }

    /// Deletes job `id`'s adapter folder, if any, and the engine's copies of it.
    pub fn remove_adapter(&self, id: &str, engine: &EngineSlot) {
        let dir = self.adapter_dir(id);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!("cannot delete {}: {e}", dir.display());
            }
        }
        discard(engine, id);
    }

    fn work(me: &std::sync::Weak<Inner>, db: &Db, engine: &EngineSlot, rt: &tokio::runtime::Handle) {
        while let Some(inner) = me.upgrade() {
            let this = Self(inner);
            match rt.block_on(store::claim_next(db)) {
                Ok(Some(job)) => this.take(job, db, engine, rt),
                Ok(None) => this.wait(),
                Err(e) => {
                    tracing::error!("cannot read the training queue: {e}");
                    std::thread::sleep(POLL);
                }
            }
        }
    }

    /// Runs a claimed job to its end; a failure (or a panic in the trainer) is stored as the job's error.
    fn take(&self, job: Claimed, db: &Db, engine: &EngineSlot, rt: &tokio::runtime::Handle) {
        let id = job.id.clone();
        tracing::info!(job = %id, task = %job.task, "training job started");
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(db, engine, rt, &job)));
        let failure = match ran {
            Ok(Ok(outcome)) => {
                tracing::info!(job = %id, ?outcome, "training job ended");
                None
            }
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("the trainer failed unexpectedly (see the server's log)".to_string()),
        };
        if let Some(message) = failure {
            tracing::warn!(job = %id, "training job failed: {message}");
            match rt.block_on(store::fail(db, &job, &message)) {
                Ok(true) => self.remove_adapter(&id, engine),
                // Cancelled meanwhile, or started again: the folder may be a newer run's.
                Ok(false) => self.remove_if_latest(db, rt, &job, engine),
                Err(e) => tracing::error!(job = %id, "cannot store the job's failure: {e}"),
            }
        }
    }

    /// Deletes the adapter folder of a run that is over, unless the job was started again since (the folder is
    /// then the newer run's).
    fn remove_if_latest(&self, db: &Db, rt: &tokio::runtime::Handle, job: &Claimed, engine: &EngineSlot) {
        match rt.block_on(store::is_latest(db, job)) {
            Ok(true) => self.remove_adapter(&job.id, engine),
            Ok(false) => {}
            Err(e) => tracing::warn!(job = %job.id, "cannot tell whether the job started again: {e}"),
        }
    }

    /// The examples of `job`: training and held out.
    fn examples(&self, job: &Claimed) -> anyhow::Result<(Vec<Example>, Vec<Example>)> {
        let s = &self.0.settings;
        match job.source {
            DataSource::Synthetic => self.0.lab.synthetic(&job.task, s.synthetic_examples, s.held_out, 0),
            DataSource::Upload => Ok(split_held_out(job.data.clone(), s.held_out)),
        }
    }

    fn run(&self, db: &Db, engine: &EngineSlot, rt: &tokio::runtime::Handle, job: &Claimed) -> anyhow::Result<Outcome> {
        let s = &self.0.settings;
        let p = &job.params;
        let targets = p
            .targets
            .iter()
            .map(|t| Module::from_name(t).with_context(|| format!("unknown target module `{t}`")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (train, held) = self.examples(job)?;
        let config = TrainConfig {
            shape: LoraShape { rank: p.rank, alpha: p.alpha, targets },
            lr: p.lr,
            steps: p.steps,
            batch_size: p.batch,
            seed: 0,
            ..Default::default()
        };
        let pool = &self.0.pool;
        let mut run = pool.install(|| TrainRun::prepare(&self.0.model, &train, &held, s.seq_len, config))?;
        let counts = (train.len() - run.skipped_train, run.held_out.len());
        let save = |progress: &[Point]| rt.block_on(store::save_progress(db, job, progress, counts.0, counts.1));
        let mut progress = vec![Point {
            step: 0,
            loss: None,
            eval_loss: finite(pool.install(|| run.held_out_loss())?),
            tokens_per_s: 0.0,
            eta_s: 0.0,
        }];
        if !save(&progress)? {
            return Ok(Outcome::Cancelled);
        }
        let (start, mut tokens) = (Instant::now(), 0usize);
        for step in 1..=p.steps {
            let r = pool.install(|| run.trainer.step())?;
            if !r.loss.is_finite() {
                bail!("the loss became {} at step {step}: lower the learning rate", r.loss);
            }
            tokens += r.tokens;
            let eval = match step % s.eval_every.max(1) == 0 || step == p.steps {
                true => finite(pool.install(|| run.held_out_loss())?),
                false => None,
            };
            let elapsed = start.elapsed().as_secs_f64().max(1e-9);
            let eta_s = elapsed / step as f64 * (p.steps - step) as f64;
            progress.push(Point {
                step,
                loss: Some(r.loss),
                eval_loss: eval,
                tokens_per_s: tokens as f64 / elapsed,
                eta_s,
            });
            if !save(&progress)? {
                return Ok(Outcome::Cancelled);
            }
            if let Some(delay) = s.step_delay {
                std::thread::sleep(delay);
            }
        }
        self.save_adapter(job, &run, &progress, counts)?;
        // A job run again saves under the same id: copies the engine loaded from an earlier run are dropped.
        discard(engine, &job.id);
        let score = self.score(engine, rt, job, &held)?;
        if !rt.block_on(store::finish(db, job, &score))? {
            self.remove_if_latest(db, rt, job, engine);
            return Ok(Outcome::Cancelled);
        }
        Ok(Outcome::Done)
    }

    /// Writes the adapter, with a `training.json` of how it was made, into its folder: whole or not at all (a
    /// folder beside it, renamed into place), so the engine never reads half of one.
    fn save_adapter(
        &self,
        job: &Claimed,
        run: &TrainRun,
        progress: &[Point],
        counts: (usize, usize),
    ) -> anyhow::Result<()> {
        let partial = self.0.dir.join(format!(".{}.{}.partial", job.id, job.attempt));
        let _ = std::fs::remove_dir_all(&partial);
        run.save(&partial, DType::BF16)?;
        let last = progress.last();
        let record = serde_json::json!({
            "trained_by": "the LoRA Land web app's Train page",
            "base_model": self.0.model.file_name().map(|n| n.to_string_lossy().into_owned()),
            "task": job.task,
            "data": job.source.as_str(),
            "examples": counts.0,
            "held_out": counts.1,
            "params": job.params,
            "seq_len": self.0.settings.seq_len,
            "final_train_loss": last.and_then(|p| p.loss),
            "eval_loss_before": progress.first().and_then(|p| p.eval_loss),
            "eval_loss_after": last.and_then(|p| p.eval_loss),
        });
        std::fs::write(partial.join("training.json"), serde_json::to_string_pretty(&record)? + "\n")?;
        let dir = self.adapter_dir(&job.id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir).with_context(|| format!("cannot move the adapter into {}", dir.display()))?;
        Ok(())
    }

    /// The held-out split scored by the task's metric: greedy answers of the base model and of the new adapter,
    /// a few examples at a time through the engine's batch.
    fn score(
        &self,
        engine: &EngineSlot,
        rt: &tokio::runtime::Handle,
        job: &Claimed,
        held: &[Example],
    ) -> anyhow::Result<Score> {
        let engine = wait_for(engine, rt)?;
        let lab = &self.0.lab;
        let adapter = AdapterId::new(&adapter_id(&job.id)).context("the job's adapter id")?;
        let max_new_tokens = lab.max_new_tokens(&job.task);
        let (mut base, mut tuned, mut n) = (0.0, 0.0, 0usize);
        for chunk in held.chunks(SCORE_CHUNK) {
            let mut streams = Vec::new();
            for ex in chunk {
                let prompt = engine.tokenizer().encode(&ex.prompt, true)?;
                for a in [None, Some(adapter.clone())] {
                    let request = GenerateRequest {
                        prompt: Prompt::Tokens(prompt.clone()),
                        adapter: a,
                        sampling: SamplingParams::greedy(),
                        max_new_tokens,
                        ..Default::default()
                    };
                    streams.push(generate_patiently(&engine, request)?);
                }
            }
            let mut texts = Vec::with_capacity(streams.len());
            for mut stream in streams {
                texts.push(loop {
                    match stream.blocking_next() {
                        Some(Ok(Event::Finished(f))) => break f.text,
                        Some(Ok(Event::Token(_))) => continue,
                        Some(Err(e)) => return Err(anyhow::Error::new(e).context("scoring the held-out split")),
                        None => bail!("the engine ended a scoring request without finishing it"),
                    }
                });
            }
            for (ex, pair) in chunk.iter().zip(texts.chunks(2)) {
                base += lab.score(&job.task, &pair[0], &ex.completion);
                tuned += lab.score(&job.task, &pair[1], &ex.completion);
                n += 1;
            }
        }
        let mean = |sum: f64| if n == 0 { 0.0 } else { 100.0 * sum / n as f64 };
        Ok(Score { metric: lab.metric(&job.task), n, base: mean(base), adapter: mean(tuned) })
    }
}

/// How long scoring waits for room in the engine's queue, when serving has filled it, before the job fails.
const QUEUE_PATIENCE: Duration = Duration::from_secs(300);

/// Submits a scoring request, waiting while the engine's queue is full: visitors' traffic comes first, and a
/// busy minute must not throw away a finished training run.
fn generate_patiently(
    engine: &engine::EngineHandle,
    request: GenerateRequest,
) -> anyhow::Result<engine::GenerationStream> {
    let started = Instant::now();
    loop {
        match engine.generate(request.clone()) {
            Err(engine::Error::Overloaded { .. }) if started.elapsed() < QUEUE_PATIENCE => {
                std::thread::sleep(Duration::from_millis(250));
            }
            other => return other.context("scoring the held-out split"),
        }
    }
}

/// The engine, once loaded (a job can finish training before the model has loaded for serving).
fn wait_for(engine: &EngineSlot, rt: &tokio::runtime::Handle) -> anyhow::Result<engine::EngineHandle> {
    for _ in 0..600 {
        if let Some(e) = engine.get() {
            return Ok(e.clone());
        }
        rt.block_on(tokio::time::sleep(Duration::from_secs(1)));
    }
    bail!("the model did not load for serving within 10 minutes; the held-out split cannot be scored")
}

fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

/// An upload's examples split into training and held out: the tail, a fifth at most and `held_out` at most (one
/// at least).
pub fn split_held_out(mut all: Vec<Example>, held_out: usize) -> (Vec<Example>, Vec<Example>) {
    let held = held_out.min(all.len() / 5).max(1).min(all.len().saturating_sub(1));
    let tail = all.split_off(all.len() - held);
    (all, tail)
}

/// Whether `path` holds a finished adapter.
pub fn is_adapter(path: &Path) -> bool {
    path.join("adapter_config.json").is_file() && path.join("adapter_model.safetensors").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_keeps_a_fifth_of_its_tail_for_scoring() {
        let ex = |i: usize| Example { prompt: format!("p{i}"), completion: format!("c{i}") };
        let (train, held) = split_held_out((0..100).map(ex).collect(), 32);
        assert_eq!((train.len(), held.len()), (80, 20));
        assert_eq!(held[0], ex(80));
        let (train, held) = split_held_out((0..1000).map(ex).collect(), 32);
        assert_eq!((train.len(), held.len()), (968, 32));
        let (train, held) = split_held_out((0..2).map(ex).collect(), 32);
        assert_eq!((train.len(), held.len()), (1, 1));
    }
}
