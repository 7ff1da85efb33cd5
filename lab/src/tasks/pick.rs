//! Small helpers for the generators: uniform picks, numbers, distinct picks.

use rand::rngs::StdRng;
use rand::Rng;

/// One of `items`.
pub fn one<'a, T: ?Sized>(rng: &mut StdRng, items: &[&'a T]) -> &'a T {
    items[rng.random_range(0..items.len())]
}

/// `k` distinct indices below `n`.
pub fn distinct(rng: &mut StdRng, n: usize, k: usize) -> Vec<usize> {
    rand::seq::index::sample(rng, n, k).into_vec()
}

/// An integer in `lo..=hi`.
pub fn int(rng: &mut StdRng, lo: i64, hi: i64) -> i64 {
    rng.random_range(lo..=hi)
}

/// True with probability `p`.
pub fn chance(rng: &mut StdRng, p: f64) -> bool {
    rng.random_bool(p)
}

pub const PEOPLE: &[&str] = &[
    "Maria Lopez",
    "John Carter",
    "Aisha Khan",
    "Peter Novak",
    "Elena Rossi",
    "David Kim",
    "Sara Lind",
    "Tom Becker",
    "Lucia Marin",
    "Omar Haddad",
    "Hannah Weber",
    "Kenji Sato",
    "Grace Obi",
    "Ivan Petrov",
    "Nora Berg",
    "Paul Dubois",
];
pub const FIRST_NAMES: &[&str] =
    &["Maria", "John", "Aisha", "Peter", "Elena", "David", "Sara", "Tom", "Lucia", "Omar", "Hannah", "Kenji", "Grace"];
pub const CITIES: &[&str] = &[
    "Paris", "Berlin", "Madrid", "Lisbon", "Oslo", "Vienna", "Prague", "Dublin", "Warsaw", "Athens", "Toronto", "Lima",
    "Nairobi", "Osaka", "Denver", "Chicago",
];
pub const COUNTRIES: &[&str] =
    &["France", "Germany", "Spain", "Portugal", "Norway", "Austria", "Ireland", "Poland", "Greece", "Canada", "Peru"];
pub const ORGS: &[&str] = &[
    "Nordbank",
    "Helix Motors",
    "Green Valley Foods",
    "Orion Telecom",
    "Bluewave Energy",
    "Atlas Airlines",
    "Crescent Pharma",
    "Summit Media",
    "Pioneer Steel",
    "Lumen Software",
];
