//! Runs: one prompt written for a catalog task, answered by several panes. [`types`] is what a run is, for the
//! browser and the server alike; on the server, [`check`] checks a run through the engine's request contract before
//! it is stored, [`store`] is its SQL, [`executor`] generates each pane once for every stream that watches it, and
//! [`stream`] is `/runs/{id}/stream`.

pub mod types;

#[cfg(feature = "ssr")]
pub mod check;
#[cfg(feature = "ssr")]
pub mod executor;
#[cfg(feature = "ssr")]
pub mod store;
#[cfg(feature = "ssr")]
pub mod stream;

pub use types::*;
