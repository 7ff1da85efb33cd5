//! Fine-tuning from the browser: a visitor's training jobs. [`types`] is what a job is, for the browser and the
//! server alike. On the server, [`upload`] reads a training file into examples, [`store`] is the jobs' SQL,
//! [`worker`] trains queued jobs on threads of their own (bounded, so serving stays responsive), scores them and
//! saves each adapter where the engine finds it (`trained/<job>`), and [`routes`] is the HTTP side: the form's
//! `POST /train/jobs`, the live `/train/{id}/events` and the `/train/{id}/adapter.zip` download.

pub mod types;

#[cfg(feature = "ssr")]
pub mod routes;
#[cfg(feature = "ssr")]
pub mod store;
#[cfg(feature = "ssr")]
pub mod upload;
#[cfg(feature = "ssr")]
pub mod worker;

pub use types::*;

/// What training needs from the lab that the app cannot link (the lab links the app): a task's synthetic data and
/// its metric. The `loraland` binary gives the lab's; without it, jobs train on uploads only and score by exact
/// match.
#[cfg(feature = "ssr")]
pub trait TaskLab: Send + Sync + 'static {
    /// `train` training and `held_out` held-out examples of `task`'s synthetic data, drawn with `seed`.
    fn synthetic(
        &self,
        task: &str,
        train: usize,
        held_out: usize,
        seed: u64,
    ) -> anyhow::Result<(Vec<engine::train::Example>, Vec<engine::train::Example>)>;

    /// The name of `task`'s metric.
    fn metric(&self, task: &str) -> String;

    /// `prediction` scored against `expected` by `task`'s metric, from 0 to 1.
    fn score(&self, task: &str, prediction: &str, expected: &str) -> f64;

    /// Tokens to generate for one of `task`'s answers when scoring.
    fn max_new_tokens(&self, task: &str) -> usize;

    /// Whether there is synthetic data for `task`.
    fn has_synthetic(&self, task: &str) -> bool {
        self.synthetic(task, 1, 1, 0).is_ok()
    }
}

/// The app's own [`TaskLab`]: no synthetic data, exact match.
#[cfg(feature = "ssr")]
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLab;

#[cfg(feature = "ssr")]
impl TaskLab for NoLab {
    fn synthetic(
        &self,
        task: &str,
        _: usize,
        _: usize,
        _: u64,
    ) -> anyhow::Result<(Vec<engine::train::Example>, Vec<engine::train::Example>)> {
        anyhow::bail!("this server has no synthetic data for `{task}`: upload examples instead")
    }

    fn metric(&self, _: &str) -> String {
        "exact match".into()
    }

    fn score(&self, _: &str, prediction: &str, expected: &str) -> f64 {
        f64::from(u8::from(prediction.trim() == expected.trim()))
    }

    fn max_new_tokens(&self, _: &str) -> usize {
        32
    }
}
