//! What a training job is, on both sides of the wire: what a visitor asks for ([`TrainParams`], [`DataSource`]), a
//! stored job ([`JobView`], [`JobStatus`]), its loss curve ([`Point`]) and its score ([`Score`]), and what
//! `/train/{id}/events` sends ([`JobEvent`]).

use serde::{Deserialize, Serialize};

/// The modules a visitor may train, in the order the form lists them.
pub const TARGET_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// How to train: the defaults are the demo adapters' (`scripts/train-adapters.sh`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    /// Optimizer steps.
    pub steps: usize,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    pub alpha: f64,
    /// The modules that get a LoRA pair.
    pub targets: Vec<String>,
    /// Peak learning rate.
    pub lr: f64,
    /// Examples per step.
    pub batch: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self { steps: 30, rank: 8, alpha: 16.0, targets: vec!["q_proj".into(), "v_proj".into()], lr: 1e-3, batch: 8 }
    }
}

impl TrainParams {
    /// What is wrong with these parameters, given the server's largest step count.
    pub fn check(&self, max_steps: usize) -> Result<(), String> {
        if self.steps == 0 || self.steps > max_steps {
            return Err(format!("steps must be from 1 to {max_steps}"));
        }
        if !(1..=64).contains(&self.rank) {
            return Err("rank must be from 1 to 64".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1024.0) {
            return Err("alpha must be a number above 0 and at most 1024".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 0.1) {
            return Err("the learning rate must be above 0 and at most 0.1".into());
        }
        if !(1..=32).contains(&self.batch) {
            return Err("the batch size must be from 1 to 32".into());
        }
        if self.targets.is_empty() {
            return Err("choose at least one target module".into());
        }
        if let Some(bad) = self.targets.iter().find(|t| !TARGET_MODULES.contains(&t.as_str())) {
            return Err(format!("unknown target module `{bad}`: expected one of {}", TARGET_MODULES.join(", ")));
        }
        Ok(())
    }
}

/// Where a job's examples come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// The task's synthetic data, generated as the demo adapters' was.
    Synthetic,
    /// The visitor's file.
    Upload,
}

impl DataSource {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synthetic => "synthetic",
            Self::Upload => "upload",
        }
    }

    /// The source a stored name names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "synthetic" => Some(Self::Synthetic),
            "upload" => Some(Self::Upload),
            _ => None,
        }
    }
}

/// Where a job is. `queued` → `running` → `done` | `failed` | `cancelled`; a job that a restart cut off is
/// `interrupted`; a cancelled, failed or interrupted job can be queued again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a training worker.
    Queued,
    /// Training (or scoring).
    Running,
    /// Trained, saved and scored.
    Done,
    /// Stopped by an error.
    Failed,
    /// Stopped by its session.
    Cancelled,
    /// Cut off by a restart of the server that ran it.
    Interrupted,
}

impl JobStatus {
    /// Every status.
    pub const ALL: [Self; 6] =
        [Self::Queued, Self::Running, Self::Done, Self::Failed, Self::Cancelled, Self::Interrupted];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    /// The status a stored name names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the job will not change again by itself.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// Whether a job may go from `self` to `next`: the job state machine.
    pub fn can_become(self, next: Self) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Queued, Running | Cancelled)
                | (Running, Done | Failed | Cancelled | Interrupted)
                | (Failed | Cancelled | Interrupted, Queued)
        )
    }

    /// Whether a job in `from` may become `self`.
    pub fn can_become_from(self, from: Self) -> bool {
        from.can_become(self)
    }

    /// The statuses a job may be in to become `next` (the `WHERE` of the update that moves it).
    pub fn sources_of(next: Self) -> Vec<Self> {
        Self::ALL.into_iter().filter(|s| s.can_become(next)).collect()
    }
}

/// One point of the loss curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The step it was taken after (0: before training).
    pub step: usize,
    /// The batch's training loss (`None` at step 0).
    pub loss: Option<f32>,
    /// The held-out loss, on the steps it was measured.
    pub eval_loss: Option<f32>,
    /// Training tokens per second so far.
    pub tokens_per_s: f64,
    /// Seconds left, by the pace so far.
    pub eta_s: f64,
}

/// The held-out split scored with the task's metric, base model against the new adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The metric's name.
    pub metric: String,
    /// Held-out examples scored.
    pub n: usize,
    /// The base model's mean score, 0–100.
    pub base: f64,
    /// The adapter's mean score, 0–100.
    pub adapter: f64,
}

/// A stored job, as its page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id; its adapter is [`JobView::adapter_id`].
    pub id: String,
    /// The visitor's name for it.
    pub name: String,
    /// The catalog task whose template the examples fill.
    pub task: String,
    /// Where the examples came from.
    pub source: DataSource,
    /// How it trains.
    pub params: TrainParams,
    /// Where it is.
    pub status: JobStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Training examples read.
    pub examples: usize,
    /// Held-out examples.
    pub held_out: usize,
    /// Why examples were left out, one line each (at most a few), and how many in all.
    pub skipped: Vec<String>,
    /// The loss curve so far.
    pub progress: Vec<Point>,
    /// The held-out score, once done.
    pub score: Option<Score>,
    /// Whether every visitor's gallery shows it.
    pub published: bool,
    /// Whether the visitor looking at it made it.
    pub mine: bool,
    /// When it was made, Unix milliseconds.
    pub created_at: i64,
}

impl JobView {
    /// The adapter a job makes: `trained/<id>`, what the engine and the API call it.
    pub fn adapter_id(&self) -> String {
        adapter_id(&self.id)
    }

    /// The last point of the curve.
    pub fn last(&self) -> Option<&Point> {
        self.progress.last()
    }
}

/// The adapter id of job `id`.
pub fn adapter_id(job: &str) -> String {
    format!("{TRAINED_PREFIX}/{job}")
}

/// The job whose adapter `adapter` names, when it is a trained adapter's id (`trained/` and a job id: 12 lowercase
/// hex digits).
pub fn job_of_adapter(adapter: &str) -> Option<&str> {
    let job = adapter.strip_prefix(TRAINED_PREFIX)?.strip_prefix('/')?;
    (job.len() == 12 && job.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(job)
}

/// The id prefix of trained adapters.
pub const TRAINED_PREFIX: &str = "trained";

/// What `/train/{id}/events` sends: the job as it stands, each time it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job: JobView,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_allows_only_its_transitions() {
        use JobStatus::*;
        assert!(Queued.can_become(Running) && Queued.can_become(Cancelled));
        assert!(!Queued.can_become(Done), "a job trains before it is done");
        assert!(Running.can_become(Interrupted) && Running.can_become(Failed));
        assert!(!Done.can_become(Queued), "a finished adapter is not retrained in place");
        assert!(!Done.can_become(Cancelled));
        for s in [Failed, Cancelled, Interrupted] {
            assert!(s.can_become(Queued), "{s:?} can be started again");
            assert!(s.is_final());
        }
        assert_eq!(JobStatus::sources_of(Queued), [Failed, Cancelled, Interrupted]);
        assert_eq!(JobStatus::sources_of(Cancelled), [Queued, Running]);
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn parameters_are_checked_with_the_field_named() {
        assert_eq!(TrainParams::default().check(500), Ok(()));
        let with = |f: fn(&mut TrainParams)| {
            let mut p = TrainParams::default();
            f(&mut p);
            p.check(500).unwrap_err()
        };
        assert_eq!(with(|p| p.steps = 501), "steps must be from 1 to 500");
        assert!(with(|p| p.rank = 0).starts_with("rank"));
        assert!(with(|p| p.lr = f64::NAN).starts_with("the learning rate"));
        assert!(with(|p| p.targets = vec!["lm_head".into()]).starts_with("unknown target module `lm_head`"));
        assert!(with(|p| p.targets.clear()).contains("at least one"));
    }
}
