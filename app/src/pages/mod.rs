//! One module per page of the site.

mod compare;
mod history;
mod home;
mod not_found;
pub(crate) mod playground;
pub(crate) mod run;
mod train;

pub use compare::Compare;
pub use history::History;
pub use home::Home;
pub use not_found::NotFound;
pub use playground::Playground;
pub use run::RunPage;
pub use train::{JobPage, Train};
