//! The `loraland` product: the web app's hosting (Leptos pages and server functions) and, on the same axum router,
//! the LoRAX- and OpenAI-compatible API; its configuration, metrics and `serve` (the database and its SQL are the app's, `app::db`). The command line is the
//! `loraland` crate (cli/); the lab tools (training, evaluation, benchmarks) are the `lab` crate.

pub mod api;
pub mod args;
pub mod config;
pub mod default_model;
pub mod metrics;
pub mod router;
pub mod serve;

pub use app::db;
pub use app::state::AppState;
pub use router::{router, router_with};
