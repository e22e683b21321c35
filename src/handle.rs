//! [`CcrHandle`]: the application's view of the layer's store and statistics.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::BoxError;
use crate::id::EntryId;
use crate::layer::Shared;
use crate::search::{self, SearchResult};
use crate::store::Lookup;

/// Counters the services update, read through [`CcrHandle::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests_rewritten: AtomicU64,
    pub(crate) requests_failed_open: AtomicU64,
    pub(crate) outputs_compressed: AtomicU64,
    pub(crate) tokens_before: AtomicU64,
    pub(crate) tokens_after: AtomicU64,
    pub(crate) views_reused: AtomicU64,
    pub(crate) retrievals_full: AtomicU64,
    pub(crate) retrievals_search: AtomicU64,
    pub(crate) retrievals_range: AtomicU64,
    pub(crate) retrievals_unknown: AtomicU64,
    pub(crate) retrievals_expired: AtomicU64,
    pub(crate) retrievals_invalid: AtomicU64,
    pub(crate) retrievals_unavailable: AtomicU64,
    pub(crate) continuation_rounds: AtomicU64,
    pub(crate) round_budget_exhausted: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }
}

/// A snapshot of the layer's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Entries in the store now.
    pub entries: u64,
    /// Bytes the store holds now.
    pub bytes: u64,
    /// Whether the store answered for `entries` and `bytes`; when it did not (Redis down),
    /// both are 0 because they are unknown, not because the store is empty.
    pub store_available: bool,
    /// Requests sent upstream with at least one compressed output.
    pub requests_rewritten: u64,
    /// Requests sent upstream unchanged because of an internal error.
    pub requests_failed_open: u64,
    /// Tool outputs replaced by a view (counted in every request that carried them).
    pub outputs_compressed: u64,
    /// Estimated tokens of those outputs.
    pub tokens_before: u64,
    /// Estimated tokens of their views, markers included.
    pub tokens_after: u64,
    /// Tool outputs whose view came from the view cache rather than the compressors (an
    /// output seen before, in an earlier turn of the conversation).
    pub views_reused: u64,
    /// Retrieval calls the layer answered, by outcome.
    pub retrievals: RetrievalStats,
    /// Continuation requests sent upstream.
    pub continuation_rounds: u64,
    /// Exchanges that ended because the round budget was spent while the model still asked
    /// for originals.
    pub round_budget_exhausted: u64,
}

/// Retrieval calls by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetrievalStats {
    /// Answered with the full original.
    pub full: u64,
    /// Answered with the best matches of a query.
    pub search: u64,
    /// Answered with the lines, items or bytes a range query (`lines 120-180`) asked for.
    pub range: u64,
    /// The id was never issued to this tenant.
    pub unknown: u64,
    /// The id was issued but its original is gone.
    pub expired: u64,
    /// The call's arguments were not a valid request.
    pub invalid: u64,
    /// The store failed.
    pub unavailable: u64,
}

/// The application's access to what the layer stored: originals, searches and statistics.
///
/// A handle is trusted: it reads any tenant's originals. Only retrieval calls made by the model
/// are restricted to the ids issued to the request's tenant.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handle = tower_ccr::CcrLayer::new().handle();
/// // An id that was never issued resolves to nothing.
/// assert!(handle.retrieve("0123456789abcdef01234567").await.unwrap().is_none());
/// assert_eq!(handle.stats().await.outputs_compressed, 0);
/// # }
/// ```
///
/// # Clone
/// Cloning is cheap; clones share the layer's store and counters.
#[derive(Clone)]
pub struct CcrHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for CcrHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CcrHandle").finish_non_exhaustive()
    }
}

impl CcrHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Looks an id up: found (with its tenant), expired, or missing. A malformed id is missing.
    pub async fn lookup(&self, hash: &str) -> Result<Lookup, BoxError> {
        let Some(id) = EntryId::parse(hash) else {
            return Ok(Lookup::Missing);
        };
        self.shared.store.get(id, self.shared.retention).await
    }

    /// The original behind an id (as printed in a marker), or `None` when it is unknown or
    /// expired.
    pub async fn retrieve(&self, hash: &str) -> Result<Option<Arc<str>>, BoxError> {
        Ok(match self.lookup(hash).await? {
            Lookup::Found(entry) => Some(entry.original),
            Lookup::Expired | Lookup::Missing => None,
        })
    }

    /// BM25 search over the original's items (JSON array elements or lines): at most `limit`
    /// best matches. `None` when the id is unknown or expired.
    pub async fn search(
        &self,
        hash: &str,
        query: &str,
        limit: usize,
    ) -> Result<Option<SearchResult>, BoxError> {
        Ok(self
            .retrieve(hash)
            .await?
            .map(|original| search::search(&original, query, limit)))
    }

    /// Statistics since the layer was created, and what the store holds now.
    pub async fn stats(&self) -> Stats {
        let usage = self.shared.store.usage().await;
        let store_available = usage.is_ok();
        let usage = usage.unwrap_or_default();
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            entries: usage.entries,
            bytes: usage.bytes,
            store_available,
            requests_rewritten: get(&c.requests_rewritten),
            requests_failed_open: get(&c.requests_failed_open),
            outputs_compressed: get(&c.outputs_compressed),
            tokens_before: get(&c.tokens_before),
            tokens_after: get(&c.tokens_after),
            views_reused: get(&c.views_reused),
            retrievals: RetrievalStats {
                full: get(&c.retrievals_full),
                search: get(&c.retrievals_search),
                range: get(&c.retrievals_range),
                unknown: get(&c.retrievals_unknown),
                expired: get(&c.retrievals_expired),
                invalid: get(&c.retrievals_invalid),
                unavailable: get(&c.retrievals_unavailable),
            },
            continuation_rounds: get(&c.continuation_rounds),
            round_budget_exhausted: get(&c.round_budget_exhausted),
        }
    }
}
