//! Views already computed, so that a tool output coming back turn after turn is compressed
//! once rather than on every request of the conversation.
//!
//! A client resends its whole history every turn, and the layer gives every large output in it
//! the same view each time (a view depends only on the output and its [`CompressContext`]).
//! Caching that pure function's result changes no byte that goes out, only the work: a repeated
//! 100 KB log costs a hash and a lookup instead of the compressors' pass over it.

use std::sync::Arc;

use mini_moka::sync::Cache;

use crate::compress::{CompressContext, View};
use crate::id::EntryId;

/// Bytes an entry is counted for beyond its view's text (key, bookkeeping).
const ENTRY_OVERHEAD: usize = 96;

/// What the compressors gave for an output in a context: a view, or `None` (not worth it).
type Outcome = Arc<Option<View>>;

/// A bounded map from (tenant-keyed output id, context) to the compressors' outcome.
///
/// The key is the output's [`EntryId`] (a keyed hash of the secret, the tenant and the output)
/// hashed with the context, so one tenant's entries are never another's and nothing of the
/// output is kept but its view.
pub(crate) struct ViewCache {
    /// `None` when the cache is off (a budget of 0 bytes).
    views: Option<Cache<[u8; 32], Outcome>>,
}

impl ViewCache {
    /// A cache holding views of up to `max_bytes` bytes in all; 0 turns it off.
    pub(crate) fn new(max_bytes: usize) -> Self {
        let views = (max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(u64::try_from(max_bytes).unwrap_or(u64::MAX))
                .weigher(|_: &[u8; 32], outcome: &Outcome| {
                    let text = outcome.as_ref().as_ref().map_or(0, |view| view.text.len());
                    u32::try_from(text + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self { views }
    }

    /// The outcome for `id` in `context`: from the cache when it was computed before (`true`
    /// with it), else from `compute`, which is then remembered.
    pub(crate) fn get_or_compute(
        &self,
        id: &EntryId,
        context: &CompressContext<'_>,
        compute: impl FnOnce() -> Option<View>,
    ) -> (Outcome, bool) {
        let Some(views) = &self.views else {
            return (Arc::new(compute()), false);
        };
        let key = key(id, context);
        if let Some(outcome) = views.get(&key) {
            return (outcome, true);
        }
        let outcome = Arc::new(compute());
        views.insert(key, outcome.clone());
        (outcome, false)
    }
}

/// The cache key: every input of the view, each length-prefixed so that no two different
/// inputs hash the same bytes.
fn key(id: &EntryId, context: &CompressContext<'_>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tower-ccr view\0");
    hasher.update(id.as_str().as_bytes());
    hasher.update(&(context.query.len() as u64).to_le_bytes());
    hasher.update(context.query.as_bytes());
    match context.tool_name {
        Some(name) => {
            hasher.update(&[1]);
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
        }
        None => {
            hasher.update(&[0]);
        }
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::id::IdKey;

    fn view(text: &str) -> Option<View> {
        Some(View {
            text: text.to_owned(),
            unit: "lines",
            total: 10,
            kept: 2,
            lossless: false,
        })
    }

    #[test]
    fn computes_once_per_output_and_context() {
        let cache = ViewCache::new(1 << 20);
        let key = IdKey::from_secret(b"s");
        let tenant = key.tenant(b"Bearer a");
        let id = key.entry(&tenant, "output");
        let calls = Cell::new(0);
        let compute = || {
            calls.set(calls.get() + 1);
            view("v")
        };
        let context = CompressContext {
            query: "why?",
            tool_name: Some("bash"),
        };
        let (first, hit) = cache.get_or_compute(&id, &context, compute);
        assert!(!hit);
        let (again, hit) = cache.get_or_compute(&id, &context, compute);
        assert!(hit);
        assert_eq!(first, again);
        assert_eq!(calls.get(), 1);
        // Any other input is another entry: the query, the tool, the output, the tenant.
        let others = [
            (
                id.clone(),
                CompressContext {
                    query: "why",
                    tool_name: Some("bash"),
                },
            ),
            (
                id.clone(),
                CompressContext {
                    query: "why?",
                    tool_name: None,
                },
            ),
            (
                id.clone(),
                CompressContext {
                    query: "why?",
                    tool_name: Some("sh"),
                },
            ),
            (key.entry(&tenant, "output2"), context.clone()),
            (
                key.entry(&key.tenant(b"Bearer b"), "output"),
                context.clone(),
            ),
        ];
        for (id, context) in &others {
            let (_, hit) = cache.get_or_compute(id, context, compute);
            assert!(!hit);
        }
        assert_eq!(calls.get(), 1 + others.len());
    }

    #[test]
    fn remembers_outputs_not_worth_compressing() {
        let cache = ViewCache::new(1 << 20);
        let key = IdKey::from_secret(b"s");
        let id = key.entry(&key.tenant(b""), "small");
        let context = CompressContext::default();
        let (outcome, _) = cache.get_or_compute(&id, &context, || None);
        assert!(outcome.is_none());
        let (outcome, hit) = cache.get_or_compute(&id, &context, || view("never"));
        assert!(hit && outcome.is_none());
    }

    #[test]
    fn a_zero_budget_turns_it_off() {
        let cache = ViewCache::new(0);
        let key = IdKey::from_secret(b"s");
        let id = key.entry(&key.tenant(b""), "output");
        let context = CompressContext::default();
        let calls = Cell::new(0);
        for _ in 0..3 {
            let (_, hit) = cache.get_or_compute(&id, &context, || {
                calls.set(calls.get() + 1);
                view("v")
            });
            assert!(!hit);
        }
        assert_eq!(calls.get(), 3);
    }
}
