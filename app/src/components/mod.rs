//! Reusable pieces of the pages.

mod gallery;
mod header;
mod pane;

pub use gallery::{matches, Gallery};
pub use header::Header;
pub use pane::{timings, Pane, PaneLabel, PaneState};
