//! `loraland serve`: opens the database, locates the model, binds the port and serves until SIGINT/SIGTERM.

use crate::config::ServeConfig;
use crate::{db, default_model, router_with, AppState};
use anyhow::Context;
use app::context::EngineSlot;
use engine::Engine;
use leptos::prelude::LeptosOptions;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Runs the server until a shutdown signal arrives, with no synthetic task data for training (see [`run_with`]).
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    run_with(config, Arc::new(app::train::NoLab)).await
}

/// Runs the server until a shutdown signal arrives; training jobs take synthetic data and metrics from `lab`.
/// Every start-up failure comes back as one error with context.
pub async fn run_with(config: ServeConfig, lab: Arc<dyn app::train::TaskLab>) -> anyhow::Result<()> {
    let model_path = match &config.model {
        Some(path) => path.clone(),
        None => {
            let data_dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || default_model::ensure(&data_dir))
                .await
                .context("model fetch task failed")??
        }
    };
    let model = engine::ModelFiles::locate(&model_path)?;
    tracing::info!(model = %model.name, path = %model.path.display(), format = ?model.format, "model found");

    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
    }
    let db = db::connect(&config.database_url()).await?;
    let interrupted = app::run::store::interrupt_running(&db).await.context("cannot mark interrupted panes")?;
    if interrupted > 0 {
        tracing::warn!(panes = interrupted, "panes left running by the previous process are marked interrupted");
    }
    let cut_off = app::train::store::interrupt_running(&db).await.context("cannot mark interrupted training jobs")?;
    if cut_off > 0 {
        tracing::warn!(jobs = cut_off, "training jobs left running by the previous process are marked interrupted");
    }

    let addr = config.listen_addr();
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let leptos = LeptosOptions::builder()
        .output_name("loraland")
        .site_root(config.site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(addr)
        .build();
    let mut state = AppState::new(db, leptos, &model.name, EngineSlot::default());
    state.clients = app::limits::ClientLimits::new(config.limits());
    if let Some(settings) = config.train_settings()? {
        let training = app::train::worker::Training::new(model.path.clone(), config.trained_dir(), lab, settings)?;
        training.start(state.db.clone(), state.engine.clone());
        state.training = Some(training);
    }

    // Listen first, load the model meanwhile: /health answers 503 until it is ready. A load failure stops the
    // server with that error.
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    let slot = state.engine.clone();
    let engine_config = config.engine_config(model.path.clone())?;
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || match Engine::spawn(engine_config) {
        Ok(handle) => {
            tracing::info!("model loaded; ready");
            slot.fill(handle.clone());
            runtime.spawn(watch_engine(handle, failed_tx));
        }
        Err(e) => {
            let _ = failed_tx.send(anyhow::Error::new(e).context("cannot load the model"));
        }
    });

    tracing::info!("LoRA Land listening on http://{addr}");
    let app = router_with(state, &config.http_options());
    let load_error = Arc::new(std::sync::Mutex::new(None));
    let load_error_slot = load_error.clone();
    let shutdown = async move {
        tokio::select! {
            () = shutdown_signal() => {},
            Ok(e) = failed_rx => {
                if let Ok(mut slot) = load_error_slot.lock() {
                    *slot = Some(e);
                }
            }
        }
    };
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("server error")?;
    if let Some(e) = load_error.lock().ok().and_then(|mut e| e.take()) {
        return Err(e);
    }
    tracing::info!("shut down");
    Ok(())
}

/// Watches the engine's heartbeat. A stalled loop is logged (and `/health` answers 503 meanwhile, so a supervisor's
/// liveness probe can restart the process); an engine thread that has stopped (it panicked; every request in it got
/// an error) stops the server with an error, so that it exits non-zero and its supervisor starts a fresh one.
async fn watch_engine(engine: engine::EngineHandle, failed: tokio::sync::oneshot::Sender<anyhow::Error>) {
    let mut stalled = false;
    loop {
        tokio::time::sleep(engine::config::TICK).await;
        match engine.health() {
            engine::Health::Ok => {
                if stalled {
                    tracing::info!("the engine is beating again");
                }
                stalled = false;
            }
            engine::Health::Stalled { for_ } => {
                if !stalled {
                    tracing::error!(seconds = for_.as_secs_f64(), "the engine's batching loop has stalled");
                }
                stalled = true;
            }
            engine::Health::Stopped => {
                let _ = failed.send(anyhow::anyhow!("the inference engine stopped (see the error above); exiting"));
                return;
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received, finishing open requests");
}
