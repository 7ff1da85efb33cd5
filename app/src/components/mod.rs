//! Reusable pieces of the pages.

mod event_stream;
mod gallery;
mod header;
mod loss_chart;
mod pane;

pub use event_stream::EventStream;
pub use gallery::{matches, Gallery, TrainedGallery};
pub use header::Header;
pub use loss_chart::{plot, LossChart, Plot};
pub use pane::{timings, Pane, PaneLabel, PaneState};
