//! The SQL of training jobs. A job moves between statuses only by an update whose `WHERE` holds the statuses it may
//! come from ([`JobStatus::sources_of`]), so a cancel and the worker's next write cannot both win: the worker's
//! progress writes match only a `running` row, and a job whose row stopped matching was cancelled.

use super::types::{DataSource, JobStatus, JobView, Point, Score, TrainParams};
use crate::context::now_ms;
use crate::db::{Backend, Db, DbRow};
use engine::train::Example;
use sqlx::Row;
use std::time::Duration;

/// A running job on a shared Postgres whose row has not been written for this long is taken as cut off (its
/// replica is gone); each training step writes the row.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// A job to store.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The visitor's label.
    pub name: String,
    /// The catalog task.
    pub task: String,
    /// Where the examples come from.
    pub source: DataSource,
    /// The uploaded examples.
    pub data: Option<Vec<Example>>,
    /// How to train.
    pub params: TrainParams,
    /// Training examples (known now for an upload; set when the job starts for synthetic data).
    pub examples: usize,
    /// Held-out examples.
    pub held_out: usize,
    /// Why rows were left out.
    pub skipped: Vec<String>,
}

/// A job as the worker takes it.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The job.
    pub id: String,
    /// The catalog task.
    pub task: String,
    /// Where the examples come from.
    pub source: DataSource,
    /// The uploaded examples.
    pub data: Vec<Example>,
    /// How to train.
    pub params: TrainParams,
    /// Which run of the job this is: every write of the worker names it, so that a worker whose job was cancelled
    /// and started again (maybe on another replica) can no longer write to it.
    pub attempt: i64,
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Stores `job` for `session`, queued; returns its id.
pub async fn insert(db: &Db, session: &str, job: &NewJob) -> sqlx::Result<String> {
    let id = new_id();
    let data = job.data.as_ref().map(|d| serde_json::to_string(d).unwrap_or_default());
    let now = now_ms();
    sqlx::query(
        "INSERT INTO train_jobs (id, session_id, name, task_id, source, data, params, status, examples, held_out, \
         skipped, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, $11, $11)",
    )
    .bind(&id)
    .bind(session)
    .bind(&job.name)
    .bind(&job.task)
    .bind(job.source.as_str())
    .bind(data)
    .bind(serde_json::to_string(&job.params).unwrap_or_default())
    .bind(job.examples as i64)
    .bind(job.held_out as i64)
    .bind(serde_json::to_string(&job.skipped).unwrap_or_default())
    .bind(now)
    .execute(db)
    .await?;
    Ok(id)
}

/// Jobs of `session` that are queued or running.
pub async fn active_of(db: &Db, session: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM train_jobs WHERE session_id = $1 AND status IN ('queued', 'running')")
        .bind(session)
        .fetch_one(db)
        .await
}

/// Jobs `session` keeps, in any state.
pub async fn kept_by(db: &Db, session: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM train_jobs WHERE session_id = $1").bind(session).fetch_one(db).await
}

/// Jobs queued, every session's.
pub async fn queued(db: &Db) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM train_jobs WHERE status = 'queued'").fetch_one(db).await
}

/// The columns [`view_of`] reads.
macro_rules! job_columns {
    () => {
        "id, session_id, name, task_id, source, params, status, error, examples, held_out, skipped, progress, score, \
         published, created_at"
    };
}

fn view_of(r: &DbRow, session: Option<&str>) -> JobView {
    let json = |col: &str| r.get::<Option<String>, _>(col).unwrap_or_default();
    JobView {
        id: r.get("id"),
        name: r.get("name"),
        task: r.get("task_id"),
        source: DataSource::parse(r.get::<&str, _>("source")).unwrap_or(DataSource::Upload),
        params: serde_json::from_str(&json("params")).unwrap_or_default(),
        status: JobStatus::parse(r.get::<&str, _>("status")).unwrap_or(JobStatus::Failed),
        error: r.get("error"),
        examples: r.get::<i64, _>("examples").max(0) as usize,
        held_out: r.get::<i64, _>("held_out").max(0) as usize,
        skipped: serde_json::from_str(&json("skipped")).unwrap_or_default(),
        progress: serde_json::from_str(&json("progress")).unwrap_or_default(),
        score: serde_json::from_str::<Option<Score>>(&json("score")).ok().flatten(),
        published: r.get::<i64, _>("published") != 0,
        mine: session.is_some_and(|s| s == r.get::<&str, _>("session_id")),
        created_at: r.get("created_at"),
    }
}

/// Job `id` as `session` sees it, and the session that made it.
pub async fn load(db: &Db, id: &str, session: Option<&str>) -> sqlx::Result<Option<(JobView, String)>> {
    let row = sqlx::query(concat!("SELECT ", job_columns!(), " FROM train_jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| (view_of(&r, session), r.get("session_id"))))
}

/// Job `id` when `session` may see it: its own, or published.
pub async fn visible(db: &Db, id: &str, session: Option<&str>) -> sqlx::Result<Option<JobView>> {
    Ok(load(db, id, session).await?.map(|(job, _)| job).filter(|j| j.mine || j.published))
}

/// The jobs of `session`, newest first.
pub async fn list_of(db: &Db, session: &str) -> sqlx::Result<Vec<JobView>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        job_columns!(),
        " FROM train_jobs WHERE session_id = $1 ORDER BY created_at DESC, id LIMIT 100"
    ))
    .bind(session)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(|r| view_of(r, Some(session))).collect())
}

/// The trained adapters the gallery shows `session`: its own finished jobs and every published one, newest first.
pub async fn gallery(db: &Db, session: Option<&str>) -> sqlx::Result<Vec<JobView>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        job_columns!(),
        " FROM train_jobs WHERE status = 'done' AND (session_id = $1 OR published = 1) \
         ORDER BY created_at DESC, id LIMIT 100"
    ))
    .bind(session.unwrap_or(""))
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(|r| view_of(r, session)).collect())
}

/// Moves job `id` to `next` if its status allows it (see [`JobStatus::can_become`]); whether it moved. `error`
/// is stored with it (cleared by `None`).
pub async fn transition(db: &Db, id: &str, next: JobStatus, error: Option<&str>) -> sqlx::Result<bool> {
    let from = JobStatus::sources_of(next);
    // Three placeholders cover every status's sources (a status repeated is the same condition).
    let at = |i: usize| from.get(i).or(from.last()).map_or("", |s| s.as_str());
    let reset = next == JobStatus::Queued;
    let done = sqlx::query(
        "UPDATE train_jobs SET status = $1, error = $2, updated_at = $3, \
         progress = CASE WHEN $4 = 1 THEN '[]' ELSE progress END, \
         score = CASE WHEN $4 = 1 THEN NULL ELSE score END \
         WHERE id = $5 AND status IN ($6, $7, $8)",
    )
    .bind(next.as_str())
    .bind(error)
    .bind(now_ms())
    .bind(i64::from(reset))
    .bind(id)
    .bind(at(0))
    .bind(at(1))
    .bind(at(2))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes the oldest queued job for a worker (it becomes `running`), if any. Replicas sharing a database race
/// for a job by the conditional update; one wins.
pub async fn claim_next(db: &Db) -> sqlx::Result<Option<Claimed>> {
    loop {
        let row = sqlx::query(
            "SELECT id, task_id, source, data, params FROM train_jobs WHERE status = 'queued' \
             ORDER BY created_at, id LIMIT 1",
        )
        .fetch_optional(db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.get("id");
        let claimed = sqlx::query(
            "UPDATE train_jobs SET status = 'running', attempt = attempt + 1, error = NULL, updated_at = $1 \
             WHERE id = $2 AND status = 'queued' RETURNING attempt",
        )
        .bind(now_ms())
        .bind(&id)
        .fetch_optional(db)
        .await?;
        if let Some(claimed) = claimed {
            let data = row.get::<Option<String>, _>("data").unwrap_or_default();
            return Ok(Some(Claimed {
                id,
                task: row.get("task_id"),
                source: DataSource::parse(row.get::<&str, _>("source")).unwrap_or(DataSource::Upload),
                data: serde_json::from_str(&data).unwrap_or_default(),
                params: serde_json::from_str(row.get::<&str, _>("params")).unwrap_or_default(),
                attempt: claimed.get("attempt"),
            }));
        }
    }
}

/// Records the loss curve of the claimed run, with its example counts; false when that run is over (cancelled,
/// or the job started again since).
pub async fn save_progress(
    db: &Db,
    job: &Claimed,
    progress: &[Point],
    examples: usize,
    held_out: usize,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE train_jobs SET progress = $1, examples = $2, held_out = $3, updated_at = $4 \
         WHERE id = $5 AND status = 'running' AND attempt = $6",
    )
    .bind(serde_json::to_string(progress).unwrap_or_default())
    .bind(examples as i64)
    .bind(held_out as i64)
    .bind(now_ms())
    .bind(&job.id)
    .bind(job.attempt)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The claimed run is done, with its score; false when it was cancelled meanwhile.
pub async fn finish(db: &Db, job: &Claimed, score: &Score) -> sqlx::Result<bool> {
    end_run(db, job, JobStatus::Done, Some(&serde_json::to_string(score).unwrap_or_default()), None).await
}

/// The claimed run failed with `error`; false when it was over already.
pub async fn fail(db: &Db, job: &Claimed, error: &str) -> sqlx::Result<bool> {
    end_run(db, job, JobStatus::Failed, None, Some(error)).await
}

async fn end_run(
    db: &Db,
    job: &Claimed,
    status: JobStatus,
    score: Option<&str>,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE train_jobs SET status = $1, score = $2, error = $3, updated_at = $4 \
         WHERE id = $5 AND status = 'running' AND attempt = $6",
    )
    .bind(status.as_str())
    .bind(score)
    .bind(error)
    .bind(now_ms())
    .bind(&job.id)
    .bind(job.attempt)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether the claimed run is still the job's latest (its adapter folder is this run's to write or delete).
pub async fn is_latest(db: &Db, job: &Claimed) -> sqlx::Result<bool> {
    let row = sqlx::query("SELECT attempt FROM train_jobs WHERE id = $1").bind(&job.id).fetch_optional(db).await?;
    Ok(row.is_some_and(|r| r.get::<i64, _>("attempt") == job.attempt))
}

/// Shows or hides finished job `id` in every visitor's gallery; whether it is a finished job.
pub async fn set_published(db: &Db, id: &str, published: bool) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE train_jobs SET published = $1 WHERE id = $2 AND status = 'done'")
        .bind(i64::from(published))
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes job `id` with its data; whether it was there. A running job is not deleted (cancel it first).
pub async fn delete(db: &Db, id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM train_jobs WHERE id = $1 AND status <> 'running'").bind(id).execute(db).await?;
    Ok(done.rows_affected() == 1)
}

/// At start: running jobs that no process trains any more become `interrupted` (see
/// [`crate::run::store::interrupt_running`] for why Postgres only takes the stale ones).
pub async fn interrupt_running(db: &Db) -> sqlx::Result<u64> {
    let before = match Backend::of_pool(db) {
        Backend::Sqlite => i64::MAX,
        Backend::Postgres => now_ms() - STALE_AFTER.as_millis() as i64,
    };
    let done = sqlx::query(
        "UPDATE train_jobs SET status = 'interrupted', error = 'the server restarted while it trained', \
         updated_at = $1 WHERE status = 'running' AND updated_at < $2",
    )
    .bind(now_ms())
    .bind(before)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::types::JobStatus::*;

    fn job() -> NewJob {
        NewJob {
            name: "mine".into(),
            task: "glue_sst2".into(),
            source: DataSource::Upload,
            data: Some(vec![Example { prompt: "p".into(), completion: "c".into() }]),
            params: TrainParams::default(),
            examples: 1,
            held_out: 1,
            skipped: vec!["line 3: the answer is empty".into()],
        }
    }

    #[tokio::test]
    async fn a_job_moves_through_its_states_on_both_backends() {
        for (backend, db) in crate::db::test_databases().await {
            let session = crate::session::create_session(&db).await.unwrap();
            let other = crate::session::create_session(&db).await.unwrap();
            let id = insert(&db, &session, &job()).await.unwrap();
            assert_eq!(active_of(&db, &session).await.unwrap(), 1, "{backend:?}");
            let (view, owner) = load(&db, &id, Some(&session)).await.unwrap().unwrap();
            assert_eq!((view.status, view.mine, owner.as_str()), (Queued, true, session.as_str()));
            assert_eq!(view.skipped, ["line 3: the answer is empty"]);
            assert!(visible(&db, &id, Some(&other)).await.unwrap().is_none(), "another session cannot see it");

            // The worker claims it; a second claim finds nothing.
            let claimed = claim_next(&db).await.unwrap().unwrap();
            assert_eq!((claimed.id.as_str(), claimed.data.len()), (id.as_str(), 1));
            assert!(claim_next(&db).await.unwrap().is_none());
            let point = Point { step: 1, loss: Some(2.5), eval_loss: None, tokens_per_s: 10.0, eta_s: 3.0 };
            assert!(save_progress(&db, &claimed, std::slice::from_ref(&point), 7, 2).await.unwrap());
            assert!(!transition(&db, &id, Queued, None).await.unwrap(), "a running job is not queued again");

            // Cancelled: the worker's next write does not match, and the job can be queued again from scratch.
            assert!(transition(&db, &id, Cancelled, None).await.unwrap());
            assert!(!save_progress(&db, &claimed, std::slice::from_ref(&point), 7, 2).await.unwrap());
            assert!(!finish(&db, &claimed, &score()).await.unwrap(), "a cancelled job does not become done");
            assert!(transition(&db, &id, Queued, None).await.unwrap());
            let (view, _) = load(&db, &id, None).await.unwrap().unwrap();
            assert_eq!((view.status, view.progress.len(), view.examples), (Queued, 0, 7));

            // Started again: the first run's worker can no longer write to it, the second's can.
            let again = claim_next(&db).await.unwrap().unwrap();
            assert_eq!(again.attempt, claimed.attempt + 1);
            assert!(
                !save_progress(&db, &claimed, std::slice::from_ref(&point), 7, 2).await.unwrap(),
                "the old run is over"
            );
            assert!(!fail(&db, &claimed, "old").await.unwrap());
            assert!(!finish(&db, &claimed, &score()).await.unwrap());
            assert!(!is_latest(&db, &claimed).await.unwrap() && is_latest(&db, &again).await.unwrap());

            // Done, then published: another session's gallery shows it.
            assert!(gallery(&db, Some(&session)).await.unwrap().is_empty(), "not done yet");
            assert!(save_progress(&db, &again, &[point], 7, 2).await.unwrap());
            assert!(finish(&db, &again, &score()).await.unwrap());
            assert!(!transition(&db, &id, Cancelled, None).await.unwrap(), "a done job is not cancelled");
            assert_eq!(gallery(&db, Some(&session)).await.unwrap()[0].score, Some(score()));
            assert!(gallery(&db, Some(&other)).await.unwrap().is_empty());
            assert!(set_published(&db, &id, true).await.unwrap());
            let theirs = gallery(&db, Some(&other)).await.unwrap();
            assert_eq!((theirs.len(), theirs[0].mine), (1, false));

            // A restart cuts off running jobs; deleting a job takes its data with it.
            let second = insert(&db, &session, &job()).await.unwrap();
            let running = claim_next(&db).await.unwrap().unwrap();
            assert!(!delete(&db, &second).await.unwrap(), "a running job is not deleted");
            if backend == Backend::Sqlite {
                assert_eq!(interrupt_running(&db).await.unwrap(), 1);
                assert_eq!(load(&db, &second, None).await.unwrap().unwrap().0.status, Interrupted);
            } else {
                assert!(fail(&db, &running, "boom").await.unwrap());
                assert_eq!(load(&db, &second, None).await.unwrap().unwrap().0.error.as_deref(), Some("boom"));
            }
            assert!(delete(&db, &second).await.unwrap());
            assert!(load(&db, &second, None).await.unwrap().is_none());
            assert_eq!(list_of(&db, &session).await.unwrap().len(), 1);
        }
    }

    fn score() -> Score {
        Score { metric: "accuracy".into(), n: 2, base: 50.0, adapter: 100.0 }
    }
}
