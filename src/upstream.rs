//! What the layer keeps for conversations whose history lives upstream (OpenAI Responses with
//! `previous_response_id` or a `conversation`): which upstream turns carry the retrieval tool,
//! and the answers to retrieval calls such a turn keeps but the client never saw. Both live in
//! the store, so that every replica sharing it sees them.

use std::sync::Arc;

use crate::id::{EntryId, TenantId};
use crate::json::Splice;
use crate::layer::Shared;
use crate::provider::{Adapter, Answer};
use crate::store::{Entry, Lookup};

/// The store entry that records that an upstream turn (a response id, a conversation) carried
/// the retrieval tool.
pub(crate) fn upstream_turn_id(shared: &Shared, tenant: &TenantId, turn: &str) -> EntryId {
    shared
        .key
        .entry(tenant, &format!("\0ccr upstream turn\0{turn}"))
}

/// The store entry holding the answers to calls an upstream turn keeps but the client never
/// saw (see [`Adapter::unsettled_calls`]).
fn unsettled_id(shared: &Shared, tenant: &TenantId, turn: &str) -> EntryId {
    shared
        .key
        .entry(tenant, &format!("\0ccr unsettled calls\0{turn}"))
}

pub(crate) async fn remember_unsettled_calls(
    shared: &Shared,
    tenant: &TenantId,
    turn: &str,
    answers: &[Answer],
) {
    let answers: Vec<(&str, &str)> = answers
        .iter()
        .map(|answer| (answer.call_id.as_str(), answer.text.as_str()))
        .collect();
    let Ok(serialized) = serde_json::to_string(&answers) else {
        return;
    };
    let entry = Entry {
        tenant: tenant.clone(),
        original: Arc::from(serialized),
    };
    if let Err(error) = shared
        .store
        .put(unsettled_id(shared, tenant, turn), entry, shared.retention)
        .await
    {
        tracing::warn!(%error, "store failed; the next request continuing this turn may be refused upstream");
    }
}

/// Adds to `splice` the answers to the calls the continued upstream turn kept unanswered.
pub(crate) async fn settle_unsettled_calls(
    shared: &Shared,
    adapter: &dyn Adapter,
    tenant: &TenantId,
    turn: &str,
    body: &str,
    splice: &mut Splice,
) {
    let Ok(Lookup::Found(entry)) = shared
        .store
        .get(unsettled_id(shared, tenant, turn), shared.retention)
        .await
    else {
        return;
    };
    if entry.tenant != *tenant {
        return;
    }
    let Ok(answers) = serde_json::from_str::<Vec<(String, String)>>(&entry.original) else {
        return;
    };
    let answers: Vec<Answer> = answers
        .into_iter()
        .map(|(call_id, text)| Answer { call_id, text })
        .collect();
    match adapter.settle(body, &answers, splice) {
        Ok(()) => tracing::debug!(
            api = adapter.name(),
            calls = answers.len(),
            "answers to calls kept upstream added"
        ),
        Err(malformed) => {
            tracing::warn!(api = adapter.name(), %malformed, "could not answer calls kept upstream")
        }
    }
}

/// Records that the response and the conversation it belongs to carry the tool, so that the
/// requests continuing them keep it.
pub(crate) async fn remember_upstream_turn(
    shared: &Shared,
    tenant: &TenantId,
    turns: impl IntoIterator<Item = String>,
) {
    for turn in turns {
        let entry = Entry {
            tenant: tenant.clone(),
            original: Arc::from(""),
        };
        if let Err(error) = shared
            .store
            .put(
                upstream_turn_id(shared, tenant, &turn),
                entry,
                shared.retention,
            )
            .await
        {
            tracing::warn!(%error, "store failed; a continued conversation may lose the tool");
        }
    }
}

/// The store entry naming the upstream turn that stands for a response id the client saw: a
/// streamed response keeps its first round's id for the client, while the turn is whole only in
/// the last round's response.
fn alias_id(shared: &Shared, tenant: &TenantId, shown: &str) -> EntryId {
    shared
        .key
        .entry(tenant, &format!("\0ccr response alias\0{shown}"))
}

pub(crate) async fn remember_alias(shared: &Shared, tenant: &TenantId, shown: &str, real: &str) {
    let entry = Entry {
        tenant: tenant.clone(),
        original: Arc::from(real),
    };
    if let Err(error) = shared
        .store
        .put(alias_id(shared, tenant, shown), entry, shared.retention)
        .await
    {
        tracing::warn!(%error, "store failed; a request continuing this streamed response will miss its retrieval rounds");
    }
}

/// The upstream turn a response id the client saw stands for, when it is an alias.
pub(crate) async fn resolve_alias(
    shared: &Shared,
    tenant: &TenantId,
    shown: &str,
) -> Option<String> {
    match shared
        .store
        .get(alias_id(shared, tenant, shown), shared.retention)
        .await
    {
        Ok(Lookup::Found(entry)) if entry.tenant == *tenant => Some(entry.original.to_string()),
        _ => None,
    }
}
