//! Provider adapters: everything that differs between API shapes lives behind [`Adapter`],
//! one file per shape. The service drives the loop; an adapter only reads and writes bodies.

mod anthropic;
mod gemini;
mod openai_chat;
mod openai_responses;

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::json::{
    OrderedObject, Splice, array_append_point, is_null, object_append_point, span_of,
};
pub(crate) use crate::sse::SseEvent;

pub(crate) use anthropic::AnthropicMessages;
pub(crate) use gemini::Gemini;
pub(crate) use openai_chat::OpenAiChat;
pub(crate) use openai_responses::OpenAiResponses;

/// Description of the injected retrieval tool. Its bytes never change: the provider's prompt
/// cache covers the tools array.
pub(crate) const TOOL_DESCRIPTION: &str = "Get back the original of a tool output that was compressed. A compressed output ends with a marker such as [120 items compressed to 12. Retrieve more: hash=<24 hex>]; the original is kept intact. Call with that hash to get the whole original, or add a query to get only the records or lines that match it.";
/// Description of the `hash` parameter.
pub(crate) const HASH_DESCRIPTION: &str =
    "The 24 hex characters after hash= in the marker of the compressed output.";
/// Description of the `query` parameter.
pub(crate) const QUERY_DESCRIPTION: &str = "Optional search words: return only the records (of a JSON output) or lines that match best, instead of the whole original.";

/// Most bytes of the user's question and of the call's arguments that go into a query: enough
/// for any question, and a bound on the compressors' work per output.
pub(crate) const MAX_QUESTION_BYTES: usize = 2_000;
pub(crate) const MAX_ARGUMENTS_BYTES: usize = 1_000;

/// At most `max` bytes of `text`, cut on a char boundary.
pub(crate) fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `text` as a JSON object with its members in order.
pub(crate) fn object(text: &str) -> Result<OrderedObject<'_>, Malformed> {
    serde_json::from_str(text).map_err(|_| Malformed("expected a JSON object"))
}

/// `text` as a JSON array of raw elements.
pub(crate) fn array(text: &str) -> Result<Vec<&RawValue>, Malformed> {
    serde_json::from_str(text).map_err(|_| Malformed("expected a JSON array"))
}

/// Appends `element` to the array in the root member `key` of `body`, after what is there: the
/// member may hold an array, be `null` (it becomes `[element]`), or be absent (it is added).
pub(crate) fn append_to_root_array(
    body: &str,
    key: &str,
    element: String,
    splice: &mut Splice,
) -> Result<(), Malformed> {
    let root = object(body)?;
    match root.get(key) {
        Some(value) if is_null(value) => {
            let span = span_of(body, value).ok_or(Malformed("member span"))?;
            splice.replace(span, format!("[{element}]"));
        }
        Some(value) => {
            let span = span_of(body, value).ok_or(Malformed("member span"))?;
            let (at, has_items) =
                array_append_point(body, &span).ok_or(Malformed("expected an array"))?;
            splice.insert(
                at,
                if has_items {
                    format!(",{element}")
                } else {
                    element
                },
            );
        }
        None => {
            let (at, has_members) = object_append_point(body).ok_or(Malformed("root"))?;
            let comma = if has_members { "," } else { "" };
            splice.insert(
                at,
                format!("{comma}{}:[{element}]", crate::json::quote(key)),
            );
        }
    }
    Ok(())
}

/// Sets the root member `key` of `body` to `value` (JSON text): replaced where present, added
/// after the other members otherwise.
pub(crate) fn set_root_member(
    body: &str,
    root: &OrderedObject<'_>,
    key: &str,
    value: &str,
    splice: &mut Splice,
) -> Result<(), Malformed> {
    match root.get(key) {
        Some(current) => {
            let span = span_of(body, current).ok_or(Malformed("member span"))?;
            splice.replace(span, value.to_owned());
        }
        None => {
            let (at, has_members) = object_append_point(body).ok_or(Malformed("root"))?;
            let comma = if has_members { "," } else { "" };
            splice.insert(at, format!("{comma}{}:{value}", crate::json::quote(key)));
        }
    }
    Ok(())
}

/// Replaces the usage object in the root member `key` of a response by its sum with the usage
/// of `earlier` rounds (nothing to do without earlier rounds or a usage object).
pub(crate) fn sum_root_usage(
    response: &str,
    root: &OrderedObject<'_>,
    key: &str,
    earlier: &[serde_json::Value],
    splice: &mut Splice,
) -> Result<(), Malformed> {
    if let Some(usage) = root.get(key).filter(|usage| !is_null(usage))
        && !earlier.is_empty()
    {
        let span = span_of(response, usage).ok_or(Malformed("usage span"))?;
        splice.replace(span, crate::json::sum_usage(usage, earlier));
    }
    Ok(())
}

/// A request body the adapter could not read as its API shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected body shape: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// A tool output found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolOutput {
    /// Byte range of the JSON string literal that holds the output.
    pub(crate) span: Range<usize>,
    /// The output, unescaped.
    pub(crate) text: String,
    /// The last user message before the output and the arguments of the call that produced it.
    pub(crate) query: String,
    /// The tool that produced it, when the call is in the history.
    pub(crate) tool_name: Option<String>,
}

/// What a request allows.
#[derive(Debug)]
pub(crate) enum Inspection {
    /// Leave the request alone (streaming, several choices, …).
    Skip(&'static str),
    /// The tool outputs, and whether the model could call the retrieval tool in this request
    /// (no `tool_choice: "none"`, no tool of the same name…). Without that, nothing is
    /// compressed lossily.
    Outputs {
        outputs: Vec<ToolOutput>,
        redeemable: bool,
    },
}

/// One retrieval call of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) id: String,
    /// The arguments as a JSON text.
    pub(crate) arguments: String,
}

/// What the model did in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Turn {
    /// It called only the retrieval tool: the layer answers and continues.
    Retrieve(Vec<Call>),
    /// Anything else: an answer, client tool calls, or both kinds of calls (then the
    /// retrieval calls are stripped before the response goes back).
    Other,
}

/// The layer's answer to one retrieval call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) call_id: String,
    pub(crate) text: String,
}

/// One API shape.
pub(crate) trait Adapter: Send + Sync {
    /// Short name for logs.
    fn name(&self) -> &'static str;

    /// Whether this adapter handles a request, from its head alone.
    fn matches(&self, method: &http::Method, uri: &http::Uri) -> bool;

    /// Finds the tool outputs of a request body. Strings shorter than `min_bytes` are not
    /// reported (they cannot reach the token threshold).
    fn inspect(
        &self,
        body: &str,
        tool_name: &str,
        min_bytes: usize,
    ) -> Result<Inspection, Malformed>;

    /// Adds the retrieval tool, after the client's tools.
    fn inject_tool(
        &self,
        body: &str,
        tool_name: &str,
        splice: &mut Splice,
    ) -> Result<(), Malformed>;

    /// Reads what the model did.
    fn read_turn(&self, response: &str, tool_name: &str) -> Result<Turn, Malformed>;

    /// Whether a body may hold a tool output of at least `min_bytes` bytes, from its bytes alone
    /// and cheaply: most requests are ruled out here before any parsing. The default looks for
    /// a long JSON string; an API whose outputs may be whole objects says more.
    fn may_hold_outputs(&self, body: &[u8], min_bytes: usize) -> bool {
        crate::json::has_long_string(body, min_bytes)
    }

    /// When the conversation's earlier turns live upstream rather than in `request` (OpenAI
    /// Responses with `previous_response_id` or a `conversation`): the upstream id of what the
    /// request continues. Its markers are then not in the request: a retrieval may name any
    /// stored id of the tenant, and the tool stays in requests that continue a turn the layer
    /// added it to.
    fn upstream_history(&self, _request: &str) -> Option<String> {
        None
    }

    /// Makes `request` continue the upstream turn `to` instead of the one it names: the
    /// client was shown a streamed response under its first round's id, and the turn is whole
    /// only in its last round's response.
    fn redirect_history(
        &self,
        _request: &str,
        _to: &str,
        _splice: &mut Splice,
    ) -> Result<(), Malformed> {
        Err(Malformed("this API keeps no history upstream"))
    }

    /// Retrieval calls in a final response that the layer strips although the upstream keeps
    /// them (a stored OpenAI Response: a mixed turn, or a model that ignored the forced last
    /// round): the next request continuing that response must carry their answers, or the
    /// upstream refuses it. Stateless APIs have none.
    fn unsettled_calls(&self, _request: &str, _response: &str, _tool_name: &str) -> Vec<Call> {
        Vec::new()
    }

    /// Adds the answers to the unsettled calls of the upstream turn `request` continues, ahead
    /// of the request's own input.
    fn settle(
        &self,
        _request: &str,
        _answers: &[Answer],
        _splice: &mut Splice,
    ) -> Result<(), Malformed> {
        Err(Malformed("this API keeps no calls upstream"))
    }

    /// The id under which the upstream keeps a response, for requests that continue it.
    fn response_id(&self, _response: &str) -> Option<String> {
        None
    }

    /// The usage object of a response, to sum over rounds.
    fn usage(&self, response: &str) -> Option<serde_json::Value>;

    /// The next request: `request` plus the model's turn from `response` plus the answers.
    /// With `force_final`, the request forbids further tool calls.
    fn continuation(
        &self,
        request: &str,
        response: &str,
        answers: &[Answer],
        force_final: bool,
    ) -> Result<String, Malformed>;

    /// The state of one streamed exchange (`stream: true`, answered with `text/event-stream`).
    /// `limit` bounds the bytes the filter may hold for one round.
    fn stream_filter(&self, tool_name: &str, limit: usize) -> Box<dyn StreamFilter>;

    /// The response for the client: retrieval calls removed, usage summed with `earlier`
    /// rounds. `None` when the response needs no change.
    fn finalize(
        &self,
        response: &str,
        tool_name: &str,
        earlier_usage: &[serde_json::Value],
    ) -> Result<Option<String>, Malformed>;
}

/// What the client gets of a streamed exchange, for one API shape. The service hands it the
/// upstream events of each round in order, and asks it what the client gets: every event as it
/// arrives, except the events of retrieval calls (always dropped, the indexes of the rest kept
/// consistent) and the events that end a round (held until the service knows whether another
/// round follows). Across rounds the client sees one response: one start, one end, usage
/// summed over the rounds.
pub(crate) trait StreamFilter: Send {
    /// One upstream event of the current round. What the client gets now goes to `out`.
    fn event(&mut self, event: SseEvent, out: &mut Vec<Bytes>);

    /// The round's upstream stream ended. Returns the round's response assembled as this API's
    /// non-streamed response body (for [`Adapter::read_turn`], [`Adapter::continuation`],
    /// [`Adapter::response_id`], [`Adapter::unsettled_calls`]); `None` when the round did not
    /// end as it should (no final event, an error event, over the limit): it is not continued.
    fn end_round(&mut self) -> Option<String>;

    /// Whether the round's stream ended before its final event without an error event from
    /// the upstream: a continuation cut short, which the client must be told about.
    fn cut_short(&self) -> bool;

    /// Another round follows: drop what was held back of the round that ended (its usage is
    /// kept for the sum).
    fn next_round(&mut self);

    /// No round follows: push what was held back, with usage summed over every round.
    fn finish(&mut self, out: &mut Vec<Bytes>);

    /// An event telling the client that the exchange failed after the stream began, in this
    /// API's format; the stream ends after it.
    fn error_event(&mut self, message: &str) -> Bytes;

    /// Whether the filter ended the exchange itself, an error event for the client already
    /// pushed: the upstream is then dropped (its work stops) and the client's stream ends.
    fn gave_up(&self) -> bool {
        false
    }
}

static ADAPTERS: &[&dyn Adapter] = &[&OpenAiChat, &OpenAiResponses, &AnthropicMessages, &Gemini];

/// The adapter for a request, if any.
pub(crate) fn select(method: &http::Method, uri: &http::Uri) -> Option<&'static dyn Adapter> {
    ADAPTERS
        .iter()
        .copied()
        .find(|adapter| adapter.matches(method, uri))
}
