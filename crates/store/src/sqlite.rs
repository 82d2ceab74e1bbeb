//! SQLite implementation of [`crate::Store`] (placeholder until implemented).

/// SQLite-backed store.
#[derive(Debug)]
pub struct SqliteStore;
