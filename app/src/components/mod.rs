//! Reusable pieces of the pages.

mod header;

pub use header::Header;
