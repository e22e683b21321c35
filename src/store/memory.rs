use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mini_moka::sync::{Cache, ConcurrentCacheExt};

use super::{Entry, Lookup, Retention, Store, StoreFuture, StoreUsage};
use crate::id::EntryId;

/// Default byte budget of a [`MemoryStore`]: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// What one entry costs besides its original: key, timestamps, map slots.
const ENTRY_OVERHEAD: u64 = 160;

/// How many expired-or-evicted ids are remembered, to tell "expired" from "unknown".
const ISSUED_MEMORY: u64 = 1 << 17;

/// When the store is full, evict down to this share of the budget (in percent), so that room is
/// made in batches rather than on every write.
const REFILL_PERCENT: u64 = 90;

/// How often a write sweeps out entries whose time is up.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The default store: in process memory, on mini-moka, weighed in bytes.
///
/// mini-moka admits new entries through TinyLFU: when the cache is full, a new entry that has
/// not been seen before is dropped at the next maintenance pass although `insert` just made it
/// visible. Left alone, a full store would refuse every new original (and the layer would stop
/// compressing new outputs). So `put` keeps room: when the new entry would not fit, it first
/// evicts the least recently used entries (down to 90% of the budget, so this happens in
/// batches), then inserts, runs the maintenance pass and checks residency before it answers:
/// the layer never emits a marker for an entry that is already gone.
///
/// # Clone
/// `MemoryStore` is not `Clone`; share it as `Arc<MemoryStore>` (which is a [`Store`] too).
pub struct MemoryStore {
    entries: Cache<EntryId, Arc<Slot>>,
    /// Ids this store has held, kept longer and cheaper than the originals.
    issued: Cache<EntryId, ()>,
    epoch: Instant,
    last_sweep_ms: AtomicU64,
    /// A counter of writes and reads, to order entries by recency exactly (milliseconds tie).
    clock: AtomicU64,
    max_bytes: u64,
    /// Makes room, inserting and checking admission one put at a time: two puts that each made
    /// room for themselves would otherwise together overflow the budget, and TinyLFU would
    /// refuse one of them.
    admission: std::sync::Mutex<()>,
}

struct Slot {
    entry: Entry,
    created_ms: u64,
    last_access_ms: AtomicU64,
    last_use: AtomicU64,
}

impl Slot {
    fn is_expired(&self, now_ms: u64, retention: Retention) -> bool {
        let idle = now_ms.saturating_sub(self.last_access_ms.load(Ordering::Relaxed));
        let age = now_ms.saturating_sub(self.created_ms);
        u128::from(idle) > retention.idle.as_millis()
            || u128::from(age) > retention.max_age.as_millis()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the default budget (256 MiB).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to set the byte budget.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn weight(id: &EntryId, slot: &Slot) -> u64 {
        slot.entry.original.len() as u64 + id.as_str().len() as u64 + ENTRY_OVERHEAD
    }

    fn put_now(&self, id: EntryId, entry: Entry, retention: Retention) -> bool {
        // An entry that expires as it is written cannot back a marker (as in RedisStore).
        if retention.idle.is_zero() || retention.max_age.is_zero() {
            return false;
        }
        let now = self.now_ms();
        self.sweep_if_due(now, retention);
        if let Some(slot) = self.entries.get(&id) {
            if !slot.is_expired(now, retention) && slot.entry == entry {
                self.touch(&slot, now);
                return true;
            }
            self.entries.invalidate(&id);
        }
        let slot = Arc::new(Slot {
            entry,
            created_ms: now,
            last_access_ms: AtomicU64::new(now),
            last_use: AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed)),
        });
        let weight = Self::weight(&id, &slot);
        if weight > self.max_bytes.min(u64::from(u32::MAX)) {
            return false;
        }
        let _admission = self
            .admission
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.keep_room(weight);
        self.entries.insert(id.clone(), slot);
        // Run admission now: an entry TinyLFU rejects disappears here, not after the marker
        // went out.
        self.entries.sync();
        let resident = self.entries.contains_key(&id);
        if resident {
            self.issued.insert(id, ());
        }
        resident
    }

    fn get_now(&self, id: &EntryId, retention: Retention) -> Lookup {
        let now = self.now_ms();
        match self.entries.get(id) {
            Some(slot) if !slot.is_expired(now, retention) => {
                self.touch(&slot, now);
                Lookup::Found(slot.entry.clone())
            }
            Some(_) => {
                self.entries.invalidate(id);
                Lookup::Expired
            }
            None if self.issued.contains_key(id) => Lookup::Expired,
            None => Lookup::Missing,
        }
    }

    fn touch(&self, slot: &Slot, now: u64) {
        slot.last_access_ms.store(now, Ordering::Relaxed);
        slot.last_use.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// Evicts the least recently used entries when `weight` more bytes would not fit, so that
    /// TinyLFU admission has nothing to refuse.
    fn keep_room(&self, weight: u64) {
        self.entries.sync();
        if self.entries.weighted_size() + weight <= self.max_bytes {
            return;
        }
        let target = (self.max_bytes / 100 * REFILL_PERCENT).saturating_sub(weight);
        let mut by_age: Vec<(u64, EntryId, u64)> = self
            .entries
            .iter()
            .map(|entry| {
                let slot = entry.value();
                let last_use = slot.last_use.load(Ordering::Relaxed);
                (
                    last_use,
                    entry.key().clone(),
                    Self::weight(entry.key(), slot),
                )
            })
            .collect();
        by_age.sort_unstable();
        let mut size = self.entries.weighted_size();
        for (_, id, weight) in by_age {
            if size <= target {
                break;
            }
            self.entries.invalidate(&id);
            size = size.saturating_sub(weight);
        }
        self.entries.sync();
    }

    /// Drops entries whose time is up, at most once per [`SWEEP_INTERVAL`], so that originals
    /// nobody reads again do not outlive their retention.
    fn sweep_if_due(&self, now: u64, retention: Retention) {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_INTERVAL.as_millis() as u64
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let expired: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|entry| entry.value().is_expired(now, retention))
            .map(|entry| entry.key().clone())
            .collect();
        for id in &expired {
            self.entries.invalidate(id);
        }
    }
}

/// Builder for [`MemoryStore`].
#[derive(Clone, Debug)]
pub struct MemoryStoreBuilder {
    max_bytes: u64,
}

impl MemoryStoreBuilder {
    /// Byte budget for originals plus bookkeeping (default 256 MiB). A single original larger
    /// than the budget is never stored (its output goes out uncompressed).
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let entries = Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(|id: &EntryId, slot: &Arc<Slot>| {
                u32::try_from(MemoryStore::weight(id, slot)).unwrap_or(u32::MAX)
            })
            .build();
        let issued = Cache::builder()
            .max_capacity(ISSUED_MEMORY)
            .time_to_live(Duration::from_secs(7 * 24 * 60 * 60))
            .build();
        MemoryStore {
            entries,
            issued,
            epoch: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            max_bytes: self.max_bytes,
            admission: std::sync::Mutex::new(()),
        }
    }
}

impl Store for MemoryStore {
    fn put(&self, id: EntryId, entry: Entry, retention: Retention) -> StoreFuture<'_, bool> {
        let resident = self.put_now(id, entry, retention);
        Box::pin(std::future::ready(Ok(resident)))
    }

    fn get(&self, id: EntryId, retention: Retention) -> StoreFuture<'_, Lookup> {
        let lookup = self.get_now(&id, retention);
        Box::pin(std::future::ready(Ok(lookup)))
    }

    fn usage(&self) -> StoreFuture<'_, StoreUsage> {
        self.entries.sync();
        let usage = StoreUsage {
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
        };
        Box::pin(std::future::ready(Ok(usage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::IdKey;

    fn entry(key: &IdKey, text: &str) -> (EntryId, Entry) {
        let tenant = key.tenant(b"t");
        let id = key.entry(&tenant, text);
        (
            id,
            Entry {
                tenant,
                original: Arc::from(text),
            },
        )
    }

    #[test]
    fn put_then_get_and_expiry() {
        let key = IdKey::from_secret(b"k");
        let store = MemoryStore::new();
        let (id, e) = entry(&key, "hello");
        assert!(store.put_now(id.clone(), e.clone(), Retention::default()));
        assert_eq!(store.get_now(&id, Retention::default()), Lookup::Found(e));
        let (unknown, _) = entry(&key, "never stored");
        assert_eq!(
            store.get_now(&unknown, Retention::default()),
            Lookup::Missing
        );
        let zero = Retention {
            idle: Duration::ZERO,
            max_age: Duration::ZERO,
        };
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(store.get_now(&id, zero), Lookup::Expired);
        // Gone from the entries, still known as issued: "expired", not "unknown".
        assert_eq!(store.get_now(&id, Retention::default()), Lookup::Expired);
        // A retention that ends as the entry is written backs no marker.
        let (other, e) = entry(&key, "gone at once");
        for retention in [
            zero,
            Retention {
                idle: Duration::ZERO,
                ..Retention::default()
            },
            Retention {
                max_age: Duration::ZERO,
                ..Retention::default()
            },
        ] {
            assert!(!store.put_now(other.clone(), e.clone(), retention));
        }
    }

    #[test]
    fn an_entry_reported_resident_is_found_and_the_budget_holds() {
        let key = IdKey::from_secret(b"k");
        let store = MemoryStore::builder().max_bytes(64 * 1024).build();
        let mut resident = Vec::new();
        for i in 0..400 {
            let text = format!("{i:04}").repeat(100);
            let (id, e) = entry(&key, &text);
            if store.put_now(id.clone(), e, Retention::default()) {
                // Residency is promised to a get right after the put.
                assert!(matches!(
                    store.get_now(&id, Retention::default()),
                    Lookup::Found(_)
                ));
                resident.push(id);
            }
        }
        assert!(!resident.is_empty());
        store.entries.sync();
        assert!(store.entries.weighted_size() <= 64 * 1024);
    }

    #[test]
    fn a_full_store_makes_room_for_new_originals_and_evicts_the_least_recently_used() {
        let key = IdKey::from_secret(b"k");
        let store = MemoryStore::builder().max_bytes(200_000).build();
        let mut ids = Vec::new();
        // Five times the budget, each original new: every one must be admitted.
        for i in 0..100 {
            let (id, e) = entry(&key, &format!("{i:05}").repeat(2_000));
            assert!(
                store.put_now(id.clone(), e, Retention::default()),
                "put {i}"
            );
            ids.push(id);
            // Keep the first original in use: it must survive.
            assert!(matches!(
                store.get_now(&ids[0], Retention::default()),
                Lookup::Found(_)
            ));
        }
        store.entries.sync();
        assert!(store.entries.weighted_size() <= 200_000);
        assert!(matches!(
            store.get_now(&ids[99], Retention::default()),
            Lookup::Found(_)
        ));
        // An evicted original reads as expired, not unknown.
        assert_eq!(
            store.get_now(&ids[1], Retention::default()),
            Lookup::Expired
        );
    }

    #[test]
    fn an_original_over_the_budget_is_refused() {
        let key = IdKey::from_secret(b"k");
        let store = MemoryStore::builder().max_bytes(1000).build();
        let (id, e) = entry(&key, &"x".repeat(2000));
        assert!(!store.put_now(id.clone(), e, Retention::default()));
        assert_eq!(store.get_now(&id, Retention::default()), Lookup::Missing);
    }
}
