//! Adapter ids: validated names, never paths. An id is one or two components (`qv_r8`, `predibase/magicoder`) of
//! letters, digits, `-`, `_` and `.`, none starting with a dot, so that `adapters_dir/<id>` can never leave the
//! adapters folder.

use std::fmt;

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 128;

/// A validated adapter id. The base model has no id (`Option<AdapterId>` is `None`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterId(String);

/// Why a string is not an adapter id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid adapter id {id:?}: {reason}")]
pub struct InvalidAdapterId {
    /// The rejected string.
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl AdapterId {
    /// Parses `s`, refusing anything path-like.
    pub fn new(s: &str) -> Result<Self, InvalidAdapterId> {
        let bad = |reason| Err(InvalidAdapterId { id: s.chars().take(MAX_ID_LEN * 2).collect(), reason });
        if s.is_empty() {
            return bad("empty");
        }
        if s.len() > MAX_ID_LEN {
            return bad("longer than 128 bytes");
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 2 {
            return bad("at most one '/' (owner/name)");
        }
        for part in parts {
            if part.is_empty() {
                return bad("empty path component");
            }
            if part.starts_with('.') {
                return bad("a component starts with '.'");
            }
            if !part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return bad("only letters, digits, '-', '_', '.' and one '/' are allowed");
            }
        }
        Ok(Self(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of a merge of adapters, `merged:<hex>`: the `:` is refused by [`AdapterId::new`], so no folder or
    /// hub repository can have a merge's id.
    pub(crate) fn merge(hex: &str) -> Self {
        Self(format!("merged:{hex}"))
    }

    /// Whether this is the id of a merge of adapters (see [`crate::registry::MergedSource::id`]).
    pub fn is_merge(&self) -> bool {
        self.0.starts_with("merged:")
    }
}

impl fmt::Display for AdapterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AdapterId {
    type Err = InvalidAdapterId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_owner_names() {
        for ok in ["qv_r8", "predibase/magicoder", "a.b-c_d", "X9"] {
            assert_eq!(AdapterId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_paths() {
        for bad in ["", "..", "../etc", "a/../b", "/abs", "a/b/c", ".hidden", "a\\\\b", "a b", "a/", "é", "a\\0b"] {
            assert!(AdapterId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(AdapterId::new(&"x".repeat(129)).is_err());
    }
}
