//! Where originals live while their markers are out: the [`Store`] trait and the default
//! [`MemoryStore`].
//!
//! The layer writes an original *before* it emits a marker for it, and emits the marker only
//! when [`Store::put`] reports the entry resident. A store that cannot promise residency
//! returns `Ok(false)` and the output goes out uncompressed.

mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use memory::{MemoryStore, MemoryStoreBuilder};

use crate::BoxError;
use crate::id::{EntryId, TenantId};

/// The future a [`Store`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// An original and the tenant it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The tenant whose request carried the original.
    pub tenant: TenantId,
    /// The tool output as the client sent it.
    pub original: Arc<str>,
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The entry is live; its idle timer was reset.
    Found(Entry),
    /// The id was issued, but its original has expired or was evicted.
    Expired,
    /// The store never held this id (or has forgotten it entirely).
    Missing,
}

/// How long originals live: `idle` since the last access, and never longer than `max_age`
/// since they were first stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Time to live since the last write or read (refreshed on every access).
    pub idle: Duration,
    /// Hard maximum age, however often the entry is read.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 60),
            max_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// How much a store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Live entries.
    pub entries: u64,
    /// Bytes the entries weigh (originals plus bookkeeping).
    pub bytes: u64,
}

/// Storage for originals, shared by every service of a layer and by its [`CcrHandle`].
///
/// Implementations must be safe to call concurrently. Ids are already tenant-keyed (the same
/// content gives different ids for different tenants); the layer still checks
/// [`Entry::tenant`] on every read.
///
/// [`CcrHandle`]: crate::CcrHandle
pub trait Store: Send + Sync + 'static {
    /// Stores `entry` under `id` (or refreshes it when already there). Returns `Ok(true)` only
    /// when a [`get`](Store::get) right after would find it: a marker is emitted only then.
    fn put(&self, id: EntryId, entry: Entry, retention: Retention) -> StoreFuture<'_, bool>;

    /// Looks `id` up and resets its idle timer.
    fn get(&self, id: EntryId, retention: Retention) -> StoreFuture<'_, Lookup>;

    /// Entries and bytes held now.
    fn usage(&self) -> StoreFuture<'_, StoreUsage>;
}

impl<T: Store + ?Sized> Store for Arc<T> {
    fn put(&self, id: EntryId, entry: Entry, retention: Retention) -> StoreFuture<'_, bool> {
        (**self).put(id, entry, retention)
    }

    fn get(&self, id: EntryId, retention: Retention) -> StoreFuture<'_, Lookup> {
        (**self).get(id, retention)
    }

    fn usage(&self) -> StoreFuture<'_, StoreUsage> {
        (**self).usage()
    }
}
