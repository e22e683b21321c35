//! Answers to the model's retrieval calls. Only ids the layer issued for this conversation and
//! tenant resolve: those of this request's markers, and stored entries of this tenant.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Deserialize;

use crate::handle::Counters;
use crate::id::{EntryId, TenantId};
use crate::layer::Shared;
use crate::search;
use crate::store::Lookup;

/// Most matches a query answer lists.
const SEARCH_LIMIT: usize = 20;

#[derive(Deserialize)]
struct Arguments {
    hash: String,
    #[serde(default)]
    query: Option<String>,
}

/// The text the model gets for one retrieval call with `arguments` (a JSON text). `conversation`
/// is the request the call answers: a stored id resolves only when it appears in it (the model
/// can only have learned a real id from its own conversation). `None` when the conversation's
/// history lives upstream (its markers are not in the request): then any stored id of the
/// tenant resolves.
pub(crate) async fn answer(
    shared: &Shared,
    tenant: &TenantId,
    issued: &HashMap<EntryId, Arc<str>>,
    conversation: Option<&str>,
    arguments: &str,
) -> String {
    let counters = &shared.counters;
    let parsed = serde_json::from_str::<Arguments>(arguments)
        .ok()
        .and_then(|args| Some((EntryId::parse(&args.hash)?, args.query)));
    let Some((id, query)) = parsed else {
        Counters::add(&counters.retrievals_invalid, 1);
        return format!(
            "Invalid arguments for {}: expected {{\"hash\": \"<the 24 hex characters after hash= in the marker>\", \"query\": \"<optional search words>\"}}.",
            shared.tool_name
        );
    };
    let in_conversation = || {
        conversation.is_none_or(|text| {
            memchr::memmem::find(text.as_bytes(), id.as_str().as_bytes()).is_some()
        })
    };
    let original = match issued.get(&id) {
        Some(original) => original.clone(),
        None if !in_conversation() => {
            Counters::add(&counters.retrievals_unknown, 1);
            tracing::debug!(id = %id, "retrieval of an id foreign to the conversation");
            return unknown(&id);
        }
        None => match shared.store.get(id.clone(), shared.retention).await {
            Ok(Lookup::Found(entry)) if entry.tenant == *tenant => entry.original,
            // Another tenant's id is not this tenant's business: it is unknown here.
            Ok(Lookup::Found(_) | Lookup::Missing) => {
                Counters::add(&counters.retrievals_unknown, 1);
                tracing::debug!(id = %id, "retrieval of an unknown id");
                return unknown(&id);
            }
            Ok(Lookup::Expired) => {
                Counters::add(&counters.retrievals_expired, 1);
                tracing::debug!(id = %id, "retrieval of an expired id");
                return format!(
                    "The original for hash={id} has expired from the cache and cannot be retrieved. Do not retry this hash; run the tool that produced it again to get the data."
                );
            }
            Err(error) => {
                Counters::add(&counters.retrievals_unavailable, 1);
                tracing::warn!(id = %id, %error, "store unavailable for a retrieval");
                return format!(
                    "The cache holding hash={id} is unavailable right now, so the original cannot be retrieved. Run the tool that produced it again to get the data."
                );
            }
        },
    };
    match query.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        Some(query) => {
            let result = search::search(&original, query, SEARCH_LIMIT);
            if result.hits.is_empty() {
                // Never "not found" for a live id: the whole original is the honest answer.
                Counters::add(&counters.retrievals_full, 1);
                return original.to_string();
            }
            Counters::add(&counters.retrievals_search, 1);
            tracing::debug!(id = %id, hits = result.hits.len(), "retrieval by query");
            render_search(&id, query, &result)
        }
        None => {
            Counters::add(&counters.retrievals_full, 1);
            tracing::debug!(id = %id, bytes = original.len(), "retrieval of a full original");
            original.to_string()
        }
    }
}

fn unknown(id: &EntryId) -> String {
    format!(
        "hash={id} is unknown: it was not issued in this conversation, so there is nothing to retrieve. Do not retry it; if you need the data, run the tool that produced it again."
    )
}

fn render_search(id: &EntryId, query: &str, result: &search::SearchResult) -> String {
    let label = if result.unit == "lines" {
        "line"
    } else {
        "item"
    };
    let mut out = format!(
        "Best matches for {query:?} in hash={id}: {} of {} matching {} ({} in all), best first.",
        result.hits.len(),
        result.matched,
        result.unit,
        result.total_items
    );
    out.push_str(" Call again without query for the whole original.\n");
    for hit in &result.hits {
        let _ = writeln!(out, "[{label} {}] {}", hit.index + 1, hit.text);
    }
    out
}
