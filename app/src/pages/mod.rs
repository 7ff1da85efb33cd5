//! One module per page of the site.

mod home;
mod not_found;
mod playground;

pub use home::Home;
pub use not_found::NotFound;
pub use playground::Playground;
