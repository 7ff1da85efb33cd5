//! One module per page of the site.

mod history;
mod home;
mod not_found;
mod playground;
pub(crate) mod run;

pub use history::History;
pub use home::Home;
pub use not_found::NotFound;
pub use playground::Playground;
pub use run::RunPage;
