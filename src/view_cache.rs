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

/// What the layer computed for an output in a context: its estimated tokens and the
/// compressors' view (`None`: not worth compressing).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Computed {
    pub(crate) tokens: usize,
    pub(crate) view: Option<View>,
}

/// A bounded map from (tenant-keyed output id, context) to what was computed for it.
///
/// The key is the output's [`EntryId`] (a keyed hash of the secret, the tenant and the output)
/// hashed with the context, so one tenant's entries are never another's and nothing of the
/// output is kept but its view.
pub(crate) struct ViewCache {
    /// `None` when the cache is off (a budget of 0 bytes).
    views: Option<Cache<[u8; 32], Arc<Computed>>>,
}

impl ViewCache {
    /// A cache holding views of up to `max_bytes` bytes in all; 0 turns it off.
    pub(crate) fn new(max_bytes: usize) -> Self {
        let views = (max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(u64::try_from(max_bytes).unwrap_or(u64::MAX))
                .weigher(|_: &[u8; 32], computed: &Arc<Computed>| {
                    let text = computed.view.as_ref().map_or(0, |view| view.text.len());
                    u32::try_from(text + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self { views }
    }

    /// What was computed for `id` in `context`, if it is still cached.
    pub(crate) fn get(&self, id: &EntryId, context: &CompressContext<'_>) -> Option<Arc<Computed>> {
        self.views.as_ref()?.get(&key(id, context))
    }

    /// Remembers what was computed for `id` in `context`.
    pub(crate) fn insert(
        &self,
        id: &EntryId,
        context: &CompressContext<'_>,
        computed: Arc<Computed>,
    ) {
        if let Some(views) = &self.views {
            views.insert(key(id, context), computed);
        }
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
    use super::*;
    use crate::id::IdKey;

    fn computed(text: &str) -> Computed {
        Computed {
            tokens: 1_234,
            view: Some(View {
                text: text.to_owned(),
                unit: "lines",
                total: 10,
                kept: 2,
                lossless: false,
            }),
        }
    }

    #[test]
    fn an_entry_is_found_only_for_the_same_output_tenant_and_context() {
        let cache = ViewCache::new(1 << 20);
        let key = IdKey::from_secret(b"s");
        let tenant = key.tenant(b"Bearer a");
        let id = key.entry(&tenant, "output");
        let context = CompressContext {
            query: "why?",
            tool_name: Some("bash"),
        };
        assert_eq!(cache.get(&id, &context), None);
        cache.insert(&id, &context, Arc::new(computed("v")));
        assert_eq!(cache.get(&id, &context).as_deref(), Some(&computed("v")));
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
            assert_eq!(cache.get(id, context), None);
        }
    }

    #[test]
    fn outputs_not_worth_compressing_are_remembered_too() {
        let cache = ViewCache::new(1 << 20);
        let key = IdKey::from_secret(b"s");
        let id = key.entry(&key.tenant(b""), "small");
        let context = CompressContext::default();
        let nothing = Computed {
            tokens: 1_500,
            view: None,
        };
        cache.insert(&id, &context, Arc::new(nothing));
        assert_eq!(cache.get(&id, &context).unwrap().view, None);
    }

    #[test]
    fn a_zero_budget_turns_it_off() {
        let cache = ViewCache::new(0);
        let key = IdKey::from_secret(b"s");
        let id = key.entry(&key.tenant(b""), "output");
        let context = CompressContext::default();
        cache.insert(&id, &context, Arc::new(computed("v")));
        assert_eq!(cache.get(&id, &context), None);
    }
}
