//! The `loraland` server: the Leptos app (pages and server functions) and, on the same axum router, the API.
//! `main.rs` parses the command line; everything testable lives here.

pub mod api;
pub mod bench;
pub mod bench_http;
pub mod bench_load;
pub mod bench_random;
#[cfg(feature = "bench-reference")]
pub mod bench_reference;
pub mod cli;
pub mod config;
pub mod db;
pub mod default_model;
pub mod device;
pub mod eval;
pub mod generate;
pub mod metrics;
pub mod router;
pub mod serve;
pub mod tasks;
pub mod train;

pub use app::state::AppState;
pub use router::{router, router_with};
