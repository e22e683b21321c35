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
/// Most bytes of matches a query answer carries (a single JSON record can be tens of KB); each
/// match is cut to its share, and the answer says how to get the rest.
const SEARCH_ANSWER_BYTES: usize = 32 * 1024;
/// Every match keeps at least this much, however many there are.
const MIN_HIT_BYTES: usize = 512;

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
    let share = (SEARCH_ANSWER_BYTES / result.hits.len().max(1)).max(MIN_HIT_BYTES);
    let mut cut = 0;
    for hit in &result.hits {
        let text = hit.text.as_str();
        let kept = &text[..floor_char_boundary(text, share)];
        let _ = write!(out, "[{label} {}] {kept}", hit.index + 1);
        if kept.len() < text.len() {
            cut += 1;
            let _ = write!(out, " … [{} more bytes]", text.len() - kept.len());
        }
        out.push('\n');
    }
    if cut > 0 {
        let _ = writeln!(
            out,
            "({cut} long {} cut short: call again without query for the whole original.)",
            if cut == 1 {
                label.to_owned()
            } else {
                format!("{label}s")
            }
        );
    }
    out
}

/// The largest index at most `at` that is a char boundary of `text`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{Hit, SearchResult};

    #[test]
    fn a_query_answer_stays_bounded_and_says_what_was_cut() {
        let id = EntryId::parse("0123456789abcdef01234567").unwrap();
        let big = "é".repeat(20_000);
        let result = SearchResult {
            unit: "items",
            total_items: 100,
            matched: 30,
            hits: (0..20)
                .map(|index| Hit {
                    index,
                    text: big.clone(),
                    score: 1.0,
                })
                .collect(),
        };
        let answer = render_search(&id, "q", &result);
        assert!(
            answer.len() < SEARCH_ANSWER_BYTES + 4_096,
            "{}",
            answer.len()
        );
        assert!(answer.contains("more bytes]"));
        assert!(answer.contains("20 long items cut short"));
        let small = SearchResult {
            unit: "lines",
            total_items: 3,
            matched: 1,
            hits: vec![Hit {
                index: 2,
                text: "needle line".into(),
                score: 2.0,
            }],
        };
        let answer = render_search(&id, "needle", &small);
        assert!(answer.ends_with("[line 3] needle line\n"), "{answer}");
    }
}
