//! Reusable pieces of the pages.

mod gallery;
mod header;
mod loss_chart;
mod pane;

pub use gallery::{matches, Gallery, TrainedGallery};
pub use header::Header;
pub use loss_chart::{plot, LossChart, Plot};
pub use pane::{timings, Pane, PaneLabel, PaneState};
