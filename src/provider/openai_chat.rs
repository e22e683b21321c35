//! OpenAI Chat Completions, and every server that speaks it: any host, any path ending in
//! `/chat/completions`.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Adapter, Answer, Call, HASH_DESCRIPTION, Inspection, MAX_ARGUMENTS_BYTES, MAX_QUESTION_BYTES,
    Malformed, QUERY_DESCRIPTION, SseEvent, StreamFilter, TOOL_DESCRIPTION, ToolOutput, Turn,
    append_to_root_array, array, object, set_root_member, sum_root_usage, truncated,
};
use crate::json::{Field, OrderedObject, Splice, is_null, quote, span_of, string_value};

/// The Chat Completions adapter.
pub(crate) struct OpenAiChat;

/// A tool call as it appears in an assistant message or a response.
#[derive(Deserialize)]
struct ToolCall {
    id: Option<String>,
    function: Option<FunctionCall>,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: Option<String>,
    arguments: Option<String>,
}

/// A tool call of a response, read leniently: servers that speak Chat Completions do not all
/// send `arguments` as a string, or an `id`. A call is ours by its name alone.
struct ResponseCall<'a> {
    raw: &'a RawValue,
    members: OrderedObject<'a>,
    name: Option<String>,
    /// The arguments as JSON text: the string unescaped, or any other value as it is.
    arguments: String,
}

impl<'a> ResponseCall<'a> {
    fn read(raw: &'a RawValue) -> Result<Self, Malformed> {
        // A call that is not an object is kept as it is, with no name: one odd element must
        // not make the whole response unreadable (our calls would then reach the client).
        let members = object(raw.get()).unwrap_or(OrderedObject(Vec::new()));
        let function = members.get("function").and_then(|f| object(f.get()).ok());
        let name = function
            .as_ref()
            .and_then(|f| f.get("name"))
            .and_then(string_value)
            .map(|n| n.into_owned());
        let arguments = match function.as_ref().and_then(|f| f.get("arguments")) {
            Some(raw) => string_value(raw).map_or_else(|| raw.get().to_owned(), |a| a.into_owned()),
            None => String::new(),
        };
        Ok(Self {
            raw,
            members,
            name,
            arguments,
        })
    }

    fn is(&self, tool_name: &str) -> bool {
        self.name.as_deref() == Some(tool_name)
    }

    /// The call's id, or one made up from its position when the server sent none (the
    /// continuation then carries the same made-up id on both sides).
    fn id(&self, index: usize) -> String {
        self.members
            .get("id")
            .and_then(string_value)
            .filter(|id| !id.is_empty())
            .map_or_else(|| format!("call_ccr_{index}"), |id| id.into_owned())
    }

    /// The call as it goes back in the continuation: as it came, with its id when it had none.
    fn replayed(&self, index: usize) -> String {
        if self
            .members
            .get("id")
            .and_then(string_value)
            .is_some_and(|id| !id.is_empty())
        {
            return self.raw.get().to_owned();
        }
        let id = quote(&self.id(index));
        let members = std::iter::once(("id", id.as_str())).chain(
            self.members
                .0
                .iter()
                .filter(|(key, _)| key != "id")
                .map(|(key, value)| (key.as_ref(), value.get())),
        );
        OrderedObject::render(members)
    }
}

/// The tool calls of the message of a response choice (empty when it has none).
fn response_calls<'a>(message: &OrderedObject<'a>) -> Result<Vec<ResponseCall<'a>>, Malformed> {
    let Some(tool_calls) = message.get("tool_calls").filter(|t| !is_null(t)) else {
        return Ok(Vec::new());
    };
    array(tool_calls.get())?
        .into_iter()
        .map(ResponseCall::read)
        .collect()
}

/// The retrieval tool in Chat Completions format.
fn tool_definition(tool_name: &str) -> String {
    format!(
        r#"{{"type":"function","function":{{"name":{},"description":{},"parameters":{{"type":"object","properties":{{"hash":{{"type":"string","description":{}}},"query":{{"type":"string","description":{}}}}},"required":["hash"]}}}}}}"#,
        quote(tool_name),
        quote(TOOL_DESCRIPTION),
        quote(HASH_DESCRIPTION),
        quote(QUERY_DESCRIPTION),
    )
}

/// Plain text of a user message's content: a string, or its text parts.
fn content_text(content: &RawValue) -> String {
    if let Some(text) = string_value(content) {
        return text.into_owned();
    }
    let Ok(parts) = array(content.get()) else {
        return String::new();
    };
    let texts: Vec<String> = parts
        .iter()
        .filter_map(|part| object(part.get()).ok())
        .filter_map(|part| {
            part.get("text")
                .and_then(string_value)
                .map(|t| t.into_owned())
        })
        .collect();
    texts.join("\n")
}

/// The parts of a request the adapter reads, in one pass over the body. Duplicate members
/// are an error (then the request passes through untouched).
#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    messages: Vec<ChatMessage<'a>>,
    #[serde(borrow, default)]
    tools: Field<'a>,
    #[serde(borrow, default)]
    tool_choice: Field<'a>,
    #[serde(borrow, default)]
    n: Field<'a>,
    #[serde(borrow, default)]
    functions: Field<'a>,
    #[serde(borrow, default)]
    function_call: Field<'a>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    role: Field<'a>,
    #[serde(borrow, default)]
    content: Field<'a>,
    #[serde(borrow, default)]
    tool_call_id: Field<'a>,
    #[serde(borrow, default)]
    tool_calls: Field<'a>,
}

/// Whether the model could call `tool_name` in this request.
fn redeemable(request: &ChatRequest<'_>, tool_name: &str) -> bool {
    // The deprecated `functions` API cannot be mixed with `tools`.
    if request.functions.0.is_some() || request.function_call.0.is_some() {
        return false;
    }
    if let Some(choice) = request.tool_choice.0 {
        match choice.get() {
            "\"auto\"" | "\"required\"" | "null" => {}
            text if text.starts_with('{') => {
                // A named function other than ours, or an allowed-tools list we are not in.
                let Ok(choice) = object(text) else {
                    return false;
                };
                let named = choice
                    .get("function")
                    .and_then(|f| object(f.get()).ok())
                    .and_then(|f| f.get("name").and_then(string_value).map(|n| n.into_owned()));
                if named.as_deref() != Some(tool_name) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    let Some(tools) = request.tools.value() else {
        return true;
    };
    let Ok(tools) = array(tools.get()) else {
        return false;
    };
    tools.iter().all(|tool| {
        let Ok(tool) = object(tool.get()) else {
            return false;
        };
        let name_of = |key: &str| {
            tool.get(key)
                .and_then(|inner| object(inner.get()).ok())
                .and_then(|inner| {
                    inner
                        .get("name")
                        .and_then(string_value)
                        .map(|n| n.into_owned())
                })
        };
        name_of("function").as_deref() != Some(tool_name)
            && name_of("custom").as_deref() != Some(tool_name)
    })
}

/// What the conversation says before each message, gathered in one forward pass (a request
/// may hold thousands of tool outputs: no scan backwards per output).
#[derive(Default)]
struct Context<'a> {
    /// Content of the last user message so far.
    last_user: Option<&'a RawValue>,
    /// Tool call id -> (tool name, arguments), from the assistant messages so far.
    calls: HashMap<String, (Option<String>, String)>,
}

impl<'a> Context<'a> {
    /// Takes in a message that comes before the ones still to be read.
    fn read(&mut self, message: &ChatMessage<'a>) {
        if message.role.is("\"user\"") {
            self.last_user = message.content.value();
        } else if message.role.is("\"assistant\"")
            && let Some(Ok(calls)) = message.tool_calls.value().map(|calls| array(calls.get()))
        {
            for call in calls {
                let Ok(call) = serde_json::from_str::<ToolCall>(call.get()) else {
                    continue;
                };
                if let (Some(id), Some(function)) = (call.id, call.function) {
                    self.calls
                        .insert(id, (function.name, function.arguments.unwrap_or_default()));
                }
            }
        }
    }

    /// The last user message (bounded), and the tool name and arguments (bounded) of the call
    /// whose id is `call_id`.
    fn of(&self, call_id: Option<&str>) -> (String, Option<String>, String) {
        let last_user = truncated(
            self.last_user.map(content_text).unwrap_or_default(),
            MAX_QUESTION_BYTES,
        );
        match call_id.and_then(|id| self.calls.get(id)) {
            Some((name, arguments)) => (
                last_user,
                name.clone(),
                truncated(arguments.clone(), MAX_ARGUMENTS_BYTES),
            ),
            None => (last_user, None, String::new()),
        }
    }
}

/// A tool call streamed as `delta.tool_calls` fragments, merged by `index` (by id and name for
/// servers that send none: see [`ChatStream::position_of`]).
struct StreamedCall {
    /// The upstream's index: `None` when it sends none (Gemini's OpenAI endpoint) or `null`.
    index: Option<u64>,
    /// Whose call it is, known from its name: `None` until a fragment names it.
    owner: Option<Owner>,
    /// Fragments of a call not named yet, held until it is.
    pending: Vec<String>,
    /// The hash of its first id, kept past the limit too: calls without an index are told
    /// apart by their ids.
    id_hash: Option<u64>,
    id: String,
    name: String,
    arguments: String,
    /// The call's other members, such as Gemini's `extra_content` with its thought signature,
    /// as raw JSON (the last value of each): the non-streamed path replays them, so the
    /// continuation of a streamed round does too.
    extras: Vec<(String, String)>,
}

/// What one call costs the filter beyond its strings (its `StreamedCall` and its entry in
/// `call_positions`), counted so that calls with nothing in them do not escape the limit.
const CALL_STATE_BYTES: usize =
    std::mem::size_of::<StreamedCall>() + 4 * std::mem::size_of::<u64>();

/// Calls a round may still open once past the limit: their state only (no id, name or
/// arguments), so that a round over the limit still hides the retrieval tool's calls and
/// forwards the client's. A stream opening more is given up: the memory stays bounded.
const MAX_CALLS_PAST_LIMIT: usize = 256;

/// Why a round is given up when a call was not named before it went over the limit, and then
/// named the client's or never named.
const UNNAMED_PAST_LIMIT: &str = "a tool call went over max_body_bytes before it was named";

/// Most distinct members a streamed message (its deltas) or one of its calls may have: a real
/// one has a handful. More are taken as more than the limit, so that looking a member up stays
/// cheap.
const MAX_MEMBERS: usize = 64;

impl StreamedCall {
    fn new(index: Option<u64>) -> Self {
        Self {
            index,
            owner: None,
            pending: Vec::new(),
            id_hash: None,
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
            extras: Vec::new(),
        }
    }

    /// Whether a fragment named it (a call `Unknown` was not named before the limit).
    fn named(&self) -> bool {
        matches!(self.owner, Some(Owner::Layer | Owner::Client(_)))
    }
}

/// A call id's hash, to tell calls apart by it (the same id gives the same hash).
fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The retrieval tool's: none of its fragments reach the client.
    Layer,
    /// The client's, with the index the client sees.
    Client(u64),
    /// Not named yet when the round went over the limit: what it held was dropped, and so are
    /// its next fragments, since it could be the retrieval tool's. Named the client's later,
    /// the round is given up (the client would get a call without its first fragments).
    Unknown,
}

/// A non-string member of the deltas, as the non-streamed message carries it.
enum DeltaMember {
    /// An array streamed in pieces (OpenRouter's `reasoning_details`, Mistral's `content`):
    /// the pieces as they came, one after the other (`[…][…]`); the elements of all of them
    /// make the message's array.
    Pieces(String),
    /// Any other value: the last one.
    Value(String),
}

impl DeltaMember {
    /// The member's value in the message. The parts of a `content` streamed in pieces are
    /// merged where a piece goes on with the part before it (see [`Parts`]); the elements of
    /// other arrays are kept as they came.
    fn value(&self, key: &str) -> String {
        let pieces = match self {
            DeltaMember::Value(value) => return value.clone(),
            DeltaMember::Pieces(pieces) => pieces,
        };
        let pieces = serde_json::Deserializer::from_str(pieces)
            .into_iter::<Vec<&RawValue>>()
            .map_while(Result::ok);
        if key == "content" {
            let mut parts = Parts::default();
            for piece in pieces {
                parts.append_piece(piece);
            }
            return parts.render();
        }
        let mut joined = String::from("[");
        for element in pieces.flatten() {
            if joined.len() > 1 {
                joined.push(',');
            }
            joined.push_str(element.get());
        }
        joined.push(']');
        joined
    }
}

/// The parts of a content array streamed in pieces, as the non-streamed message carries them.
/// `text` as a content list of one text part, `[{"type":"text","text":…}]`.
fn text_part(text: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(format!(r#"[{{"type":"text","text":{}}}]"#, quote(text))).ok()
}

/// Mistral's reasoning models stream a `thinking` or `text` chunk of one fragment per piece,
/// where the message has one chunk per block, and refuse a replayed message with several
/// thinking chunks in a row. So the first part of a piece that goes on with the last part
/// before it (see [`Part::merge`]) is merged into it: texts joined, and the parts of arrays
/// merged in turn the same way. Parts within one piece are kept as the server sent them.
#[derive(Default)]
struct Parts<'a> {
    /// The parts before the last, rendered, each followed by a comma: no piece goes on with
    /// them.
    rendered: String,
    last: Option<Box<Part<'a>>>,
    /// How deep these parts are in the content (0: the content's own list).
    depth: usize,
}

/// How deep parts are merged (Mistral's thinking chunks need 2): below, they are kept as they
/// came. Merging recurses once a level, and the upstream chooses the nesting.
const MAX_MERGE_DEPTH: usize = 4;

impl<'a> Parts<'a> {
    fn append_piece(&mut self, piece: Vec<&'a RawValue>) {
        let depth = self.depth;
        for (index, element) in piece.into_iter().enumerate() {
            if index == 0
                && self
                    .last
                    .as_mut()
                    .is_some_and(|last| last.merge(element.get(), depth))
            {
                continue;
            }
            if let Some(last) = self.last.replace(Box::new(Part::Raw(element.get()))) {
                last.render_into(&mut self.rendered);
                self.rendered.push(',');
            }
        }
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(self.rendered.len() + 2);
        out.push('[');
        out.push_str(&self.rendered);
        if let Some(last) = &self.last {
            last.render_into(&mut out);
        }
        out.push(']');
        out
    }
}

/// A content part of a streamed message: as it came, or with parts of later pieces merged in.
enum Part<'a> {
    Raw(&'a str),
    Merged {
        /// The first part's members, whose member at `position` is replaced by `joined`.
        members: OrderedObject<'a>,
        position: usize,
        joined: Joined<'a>,
    },
}

/// The merged member of a [`Part`]: strings concatenated, or arrays' parts merged.
enum Joined<'a> {
    Text(String),
    Parts(Parts<'a>),
}

/// A content part that a part of the next piece may go on with: an object with a `type` and
/// one member named by it, a string or an array (`{"type":"text","text":"…"}`, Mistral's
/// `{"type":"thinking","thinking":[…]}`); with that member's position.
fn continued_part(raw: &str) -> Option<(OrderedObject<'_>, usize)> {
    let members = object(raw).ok()?;
    let kind = members.get("type").and_then(string_value)?;
    if kind == "type" {
        return None;
    }
    let mut named = members
        .0
        .iter()
        .enumerate()
        .filter(|(_, (key, _))| *key == kind);
    let (position, (_, value)) = named.next()?;
    if named.next().is_some() || !(value.get().starts_with('"') || value.get().starts_with('[')) {
        return None;
    }
    Some((members, position))
}

/// Whether a part (`next`) goes on with another (`first`), both read by [`continued_part`]:
/// the same members in the same order, equal but for the one named by the `type`, which is
/// of the same kind (string or array) in both.
fn goes_on(
    first: &OrderedObject<'_>,
    first_position: usize,
    next: &OrderedObject<'_>,
    next_position: usize,
) -> bool {
    first_position == next_position
        && first.0.len() == next.0.len()
        && first.0.iter().zip(&next.0).enumerate().all(
            |(index, ((first_key, first_value), (next_key, next_value)))| {
                first_key == next_key
                    && if index == first_position {
                        first_value.get().as_bytes()[..1] == next_value.get().as_bytes()[..1]
                    } else {
                        first_value.get() == next_value.get()
                    }
            },
        )
}

impl<'a> Part<'a> {
    /// Merges `next` into this part, a part of a list `depth` deep, when it goes on with it
    /// (see [`goes_on`]) and the merge stays within [`MAX_MERGE_DEPTH`].
    fn merge(&mut self, next: &'a str, depth: usize) -> bool {
        let Some((next_members, next_position)) = continued_part(next) else {
            return false;
        };
        let nested = next_members.0[next_position].1.get().starts_with('[');
        if nested && depth + 1 >= MAX_MERGE_DEPTH {
            return false;
        }
        match self {
            Part::Raw(raw) => {
                let Some((members, position)) = continued_part(raw) else {
                    return false;
                };
                if !goes_on(&members, position, &next_members, next_position) {
                    return false;
                }
                let value = members.0[position].1;
                let joined = match string_value(value) {
                    Some(text) => Joined::Text(text.into_owned()),
                    None => {
                        let mut parts = Parts {
                            depth: depth + 1,
                            ..Parts::default()
                        };
                        parts.append_piece(array(value.get()).unwrap_or_default());
                        Joined::Parts(parts)
                    }
                };
                *self = Part::Merged {
                    members,
                    position,
                    joined,
                };
            }
            Part::Merged {
                members, position, ..
            } => {
                if !goes_on(members, *position, &next_members, next_position) {
                    return false;
                }
            }
        }
        let Part::Merged { joined, .. } = self else {
            return false;
        };
        let value = next_members.0[next_position].1;
        match joined {
            Joined::Text(text) => text.push_str(&string_value(value).unwrap_or_default()),
            Joined::Parts(parts) => parts.append_piece(array(value.get()).unwrap_or_default()),
        }
        true
    }

    fn render_into(&self, out: &mut String) {
        match self {
            Part::Raw(raw) => out.push_str(raw),
            Part::Merged {
                members,
                position,
                joined,
            } => {
                let joined = match joined {
                    Joined::Text(text) => quote(text),
                    Joined::Parts(parts) => parts.render(),
                };
                out.push_str(&OrderedObject::render(members.0.iter().enumerate().map(
                    |(index, (key, value))| {
                        if index == *position {
                            (key.as_ref(), joined.as_str())
                        } else {
                            (key.as_ref(), value.get())
                        }
                    },
                )));
            }
        }
    }
}

/// An ending event of a round (the chunk with `finish_reason` and all after it: the usage
/// chunk, `[DONE]`), held until the layer knows whether another round follows.
struct HeldChunk {
    raw: Bytes,
    /// The chunk's JSON as the client would get it, when it was rewritten or is JSON.
    data: Option<String>,
    changed: bool,
}

/// The client's view of a streamed Chat Completion (see [`StreamFilter`]).
pub(crate) struct ChatStream {
    tool_name: String,
    limit: usize,
    /// The first round's completion id, which the chunks of later rounds carry too: the client
    /// reads one completion.
    first_id: Option<String>,
    earlier_usage: Vec<serde_json::Value>,
    round: usize,
    // The current round.
    calls: Vec<StreamedCall>,
    /// Upstream index -> position in `calls` (a stream may open many calls).
    call_positions: HashMap<u64, usize>,
    /// Position in `calls` of the last call without an index.
    last_unindexed: Option<usize>,
    /// Calls opened after the round went over the limit.
    calls_past_limit: usize,
    client_calls: u64,
    /// The string members of the deltas (content, refusal, reasoning…), concatenated.
    texts: Vec<(String, String)>,
    /// The other members of the deltas, such as `reasoning_details`.
    delta_members: Vec<(String, DeltaMember)>,
    id: Option<String>,
    model: Option<String>,
    created: Option<String>,
    finish_reason: Option<String>,
    usage: Option<serde_json::Value>,
    held: Vec<HeldChunk>,
    /// Bytes assembled and held this round.
    bytes: usize,
    /// More than the limit came: nothing more is assembled or held, and the round is not
    /// continued.
    over_limit: bool,
    /// A member of the deltas came both as a string and as another value: the round cannot be
    /// rebuilt as the non-streamed message carries it, so it is not continued.
    unreplayable: bool,
    failed: bool,
    /// Why the filter stopped following the round, when it did: past the limit came a call it
    /// could not tell from the retrieval tool's without holding more, or whose first fragments
    /// it dropped. The client gets an error event, and nothing more of the round.
    given_up: Option<&'static str>,
}

impl ChatStream {
    fn new(tool_name: &str, limit: usize) -> Self {
        Self {
            tool_name: tool_name.to_owned(),
            limit,
            first_id: None,
            earlier_usage: Vec::new(),
            round: 0,
            calls: Vec::new(),
            call_positions: HashMap::new(),
            last_unindexed: None,
            calls_past_limit: 0,
            client_calls: 0,
            texts: Vec::new(),
            delta_members: Vec::new(),
            id: None,
            model: None,
            created: None,
            finish_reason: None,
            usage: None,
            held: Vec::new(),
            bytes: 0,
            over_limit: false,
            unreplayable: false,
            failed: false,
            given_up: None,
        }
    }

    /// Counts bytes kept for the round; past the limit nothing more is. Crossing it drops what
    /// was assembled and what calls not named yet held: those could be the retrieval tool's,
    /// so their fragments never go out ([`Owner::Unknown`]).
    fn keep(&mut self, bytes: usize) -> bool {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limit && !self.over_limit {
            self.over_limit = true;
            self.texts = Vec::new();
            self.delta_members = Vec::new();
            for call in &mut self.calls {
                call.arguments = String::new();
                call.extras = Vec::new();
                if call.owner.is_none() {
                    call.owner = Some(Owner::Unknown);
                    call.pending = Vec::new();
                }
            }
        }
        !self.over_limit
    }

    /// More came than the layer keeps of a round, in kind rather than bytes.
    fn exceed_limit(&mut self) {
        self.keep(usize::MAX);
    }

    fn give_up(&mut self, reason: &'static str) {
        self.given_up.get_or_insert(reason);
    }

    /// Whether a call not named when the round went over the limit is still not named: it was
    /// the client's (a call never named is), and the client did not get its first fragments.
    fn lost_a_call(&self) -> bool {
        self.calls
            .iter()
            .any(|call| call.owner == Some(Owner::Unknown))
    }

    /// Ends the client's stream with the error of a round given up. What was held would end
    /// it as if nothing was missing: the error does.
    fn tell_given_up(&mut self, out: &mut Vec<Bytes>) {
        if let Some(reason) = self.given_up {
            self.failed = true;
            self.held.clear();
            out.push(error_chunk(reason, "ccr_stream_over_limit"));
        }
    }

    /// `fragment` with the client's index.
    fn renumbered(fragment: &str, client_index: u64) -> String {
        let Ok(members) = object(fragment) else {
            return fragment.to_owned();
        };
        let client_index = client_index.to_string();
        OrderedObject::render(members.0.iter().map(|(key, value)| {
            if key == "index" {
                (key.as_ref(), client_index.as_str())
            } else {
                (key.as_ref(), value.get())
            }
        }))
    }

    /// A fragment of the client's call as the client gets it: as it came, unless its index
    /// changed (a call without an index gets none made up).
    fn client_fragment(fragment: &str, index: Option<u64>, client_index: u64) -> String {
        if index.is_none_or(|index| index == client_index) {
            fragment.to_owned()
        } else {
            Self::renumbered(fragment, client_index)
        }
    }

    /// The position in `calls` of the call a fragment belongs to; `None` when it starts one.
    fn position_of(&self, index: Option<u64>, id: &str, name: &str) -> Option<usize> {
        match index {
            Some(index) => self.call_positions.get(&index).copied(),
            // Without an index a fragment goes on with the last index-less call, unless it
            // starts another: by an id of its own, or by a name when that call has one.
            None => self.last_unindexed.filter(|&position| {
                let call = &self.calls[position];
                if id.is_empty() {
                    name.is_empty() || !call.named()
                } else {
                    call.id_hash == Some(id_hash(id))
                }
            }),
        }
    }

    /// Takes in one fragment of `delta.tool_calls`; returns what the client gets of it now
    /// (nothing for the retrieval tool's fragments or a call not named yet; the held fragments
    /// too once a fragment names the client's call).
    fn call_fragment(&mut self, fragment: &RawValue) -> Vec<String> {
        let Ok(members) = object(fragment.get()) else {
            return vec![fragment.get().to_owned()];
        };
        let index = members
            .get("index")
            .and_then(|i| i.get().parse::<u64>().ok());
        let function = members.get("function").and_then(|f| object(f.get()).ok());
        let text_of = |value: Option<&RawValue>| {
            value
                .and_then(string_value)
                .map(|v| v.into_owned())
                .unwrap_or_default()
        };
        let id = text_of(members.get("id"));
        let name = text_of(function.as_ref().and_then(|f| f.get("name")));
        let arguments = match function.as_ref().and_then(|f| f.get("arguments")) {
            Some(raw) if !is_null(raw) => {
                string_value(raw).map_or_else(|| raw.get().to_owned(), |a| a.into_owned())
            }
            _ => String::new(),
        };
        let extras: Vec<(&str, &str)> = members
            .0
            .iter()
            .filter(|(key, value)| {
                !matches!(key.as_ref(), "index" | "id" | "type" | "function") && !is_null(value)
            })
            .map(|(key, value)| (key.as_ref(), value.get()))
            .collect();

        let position = match self.position_of(index, &id, &name) {
            Some(position) => position,
            None => {
                // A call is followed by its state alone (its later fragments are told from the
                // retrieval tool's by it), which past the limit only a few more calls get.
                if !self.keep(CALL_STATE_BYTES) {
                    if self.calls_past_limit == MAX_CALLS_PAST_LIMIT {
                        self.give_up(
                            "too many tool calls after the round went over max_body_bytes",
                        );
                        return Vec::new();
                    }
                    self.calls_past_limit += 1;
                }
                self.calls.push(StreamedCall::new(index));
                let position = self.calls.len() - 1;
                match index {
                    Some(index) => {
                        self.call_positions.insert(index, position);
                    }
                    None => self.last_unindexed = Some(position),
                }
                position
            }
        };
        // A call is the retrieval tool's by the first name that comes.
        match self.calls[position].owner {
            _ if name.is_empty() => {}
            None => {
                let owner = if name == self.tool_name {
                    Owner::Layer
                } else {
                    self.client_calls += 1;
                    Owner::Client(self.client_calls - 1)
                };
                self.calls[position].owner = Some(owner);
            }
            Some(Owner::Unknown) if name == self.tool_name => {
                self.calls[position].owner = Some(Owner::Layer);
            }
            Some(Owner::Unknown) => {
                self.give_up(UNNAMED_PAST_LIMIT);
                return Vec::new();
            }
            Some(_) => {}
        }
        if self.calls[position].id_hash.is_none() && !id.is_empty() {
            self.calls[position].id_hash = Some(id_hash(&id));
        }
        let kept_extras = &self.calls[position].extras;
        let new_extras = extras
            .iter()
            .filter(|(key, _)| !kept_extras.iter().any(|(kept, _)| kept == key))
            .count();
        if kept_extras.len() + new_extras > MAX_MEMBERS {
            self.exceed_limit();
        }
        let extras_bytes: usize = extras
            .iter()
            .map(|(key, value)| key.len() + value.len())
            .sum();
        if self.keep(id.len() + name.len() + arguments.len() + extras_bytes) {
            let call = &mut self.calls[position];
            // Servers that resend the id or name in later fragments: keep the first.
            if call.id.is_empty() {
                call.id = id;
            }
            if call.name.is_empty() {
                call.name = name;
            }
            call.arguments.push_str(&arguments);
            for (key, value) in extras {
                match call.extras.iter_mut().find(|(kept, _)| kept == key) {
                    Some((_, kept)) => *kept = value.to_owned(),
                    None => call.extras.push((key.to_owned(), value.to_owned())),
                }
            }
        }
        match self.calls[position].owner {
            None => {
                // Held until a fragment names it, within the limit; past it nothing of the call
                // is held, so nothing of it may go out (it could be the retrieval tool's).
                if self.keep(fragment.get().len()) {
                    self.calls[position].pending.push(fragment.get().to_owned());
                } else {
                    self.calls[position].owner = Some(Owner::Unknown);
                }
                Vec::new()
            }
            Some(Owner::Layer | Owner::Unknown) => {
                self.calls[position].pending = Vec::new();
                Vec::new()
            }
            Some(Owner::Client(client_index)) => {
                let call = &mut self.calls[position];
                let mut out: Vec<String> = std::mem::take(&mut call.pending)
                    .iter()
                    .map(|pending| Self::client_fragment(pending, call.index, client_index))
                    .collect();
                out.push(Self::client_fragment(
                    fragment.get(),
                    call.index,
                    client_index,
                ));
                out
            }
        }
    }

    /// The round ends: calls never named are the client's, and get their held fragments out.
    fn unnamed_calls_fragments(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for call in &mut self.calls {
            if call.owner.is_none() {
                self.client_calls += 1;
                let client_index = self.client_calls - 1;
                call.owner = Some(Owner::Client(client_index));
                out.extend(
                    std::mem::take(&mut call.pending)
                        .iter()
                        .map(|pending| Self::client_fragment(pending, call.index, client_index)),
                );
            }
        }
        out
    }

    /// Takes in a string member of a delta (content, refusal, reasoning…): the pieces are
    /// joined. A member that came as another value too makes the round
    /// [`unreplayable`](Self::unreplayable).
    fn delta_text(&mut self, key: &str, text: Cow<'_, str>) {
        // Content text after content lists (Mistral's reasoning models may switch from lists
        // of parts to plain text): the text is a text part of the list.
        if key == "content"
            && !text.is_empty()
            && self
                .delta_members
                .iter()
                .any(|(kept, member)| kept == key && matches!(member, DeltaMember::Pieces(_)))
        {
            if let Some(part) = text_part(&text) {
                self.delta_member(key, &part);
            }
            return;
        }
        // An empty string adds nothing (Mistral's streams begin with `"content":""` before
        // their `content` lists).
        if !text.is_empty() && self.delta_members.iter().any(|(kept, _)| kept == key) {
            self.unreplayable = true;
        }
        let known = self.texts.iter().position(|(kept, _)| kept == key);
        if known.is_none() && self.texts.len() + self.delta_members.len() >= MAX_MEMBERS {
            self.exceed_limit();
        }
        let key_bytes = if known.is_none() { key.len() } else { 0 };
        if !self.keep(key_bytes + text.len()) {
            return;
        }
        match known {
            Some(position) => self.texts[position].1.push_str(&text),
            None => self.texts.push((key.to_owned(), text.into_owned())),
        }
    }

    /// Takes in a delta member that is not a string, as the non-streamed message would carry
    /// it: arrays streamed in pieces are joined, other values replaced. A member that came as
    /// a string too makes the round [`unreplayable`](Self::unreplayable).
    fn delta_member(&mut self, key: &str, value: &RawValue) {
        // Content lists after content text: the text so far is the list's first text part.
        if key == "content" && value.get().starts_with('[') {
            if let Some(position) = self
                .texts
                .iter()
                .position(|(kept, text)| kept == key && !text.is_empty())
            {
                let (_, text) = self.texts.remove(position);
                if let Some(part) = text_part(&text) {
                    self.delta_member(key, &part);
                }
            }
        }
        if self
            .texts
            .iter()
            .any(|(kept, text)| kept == key && !text.is_empty())
        {
            self.unreplayable = true;
        }
        let known = self.delta_members.iter().any(|(kept, _)| kept == key);
        if !known && self.texts.len() + self.delta_members.len() >= MAX_MEMBERS {
            self.exceed_limit();
        }
        if !self.keep(key.len() + value.get().len()) {
            return;
        }
        // A value of a parsed object: it is an array when it begins like one.
        let value = value.get();
        let member = || {
            if value.starts_with('[') {
                DeltaMember::Pieces(value.to_owned())
            } else {
                DeltaMember::Value(value.to_owned())
            }
        };
        match self.delta_members.iter_mut().find(|(kept, _)| kept == key) {
            Some((_, DeltaMember::Pieces(pieces))) if value.starts_with('[') => {
                pieces.push_str(value);
            }
            Some((_, kept)) => *kept = member(),
            None => self.delta_members.push((key.to_owned(), member())),
        }
    }

    /// A choice of a chunk as the client gets it (`None`: unchanged), taking its delta in.
    fn choice(&mut self, choice: &RawValue) -> Option<String> {
        let members = object(choice.get()).ok()?;
        if members.get("index").is_some_and(|i| i.get() != "0") {
            return None; // One choice only is compressed (n > 1 passes through).
        }
        let finishes = match members
            .get("finish_reason")
            .filter(|r| !is_null(r))
            .and_then(string_value)
        {
            Some(reason) => {
                self.finish_reason = Some(reason.into_owned());
                true
            }
            None => false,
        };
        // A finish chunk may come without a delta: it still ends the calls never named.
        let delta = match members.get("delta") {
            Some(delta) if !is_null(delta) => object(delta.get()).ok()?,
            _ => OrderedObject(Vec::new()),
        };
        let mut changed = false;
        let mut kept_calls: Vec<String> = Vec::new();
        let mut kept_members: Vec<(&str, String)> = Vec::with_capacity(delta.0.len() + 1);
        for (key, value) in &delta.0 {
            match key.as_ref() {
                // Later rounds continue the first one's message: a second role would be
                // concatenated to the first by accumulating clients.
                "role" if self.round > 0 => changed = true,
                "role" => kept_members.push((key.as_ref(), value.get().to_owned())),
                "tool_calls" if !is_null(value) => {
                    let Ok(fragments) = array(value.get()) else {
                        kept_members.push((key.as_ref(), value.get().to_owned()));
                        continue;
                    };
                    for fragment in &fragments {
                        kept_calls.extend(self.call_fragment(fragment));
                    }
                    let same = kept_calls.len() == fragments.len()
                        && kept_calls.iter().zip(&fragments).all(|(k, f)| k == f.get());
                    changed |= !same;
                    kept_members.push((key.as_ref(), String::new()));
                }
                name => {
                    if let Some(text) = string_value(value) {
                        self.delta_text(name, text);
                    } else if !is_null(value) {
                        self.delta_member(name, value);
                    }
                    kept_members.push((key.as_ref(), value.get().to_owned()));
                }
            }
        }
        if finishes {
            if self.lost_a_call() {
                self.give_up(UNNAMED_PAST_LIMIT);
                return None;
            }
            let flushed = self.unnamed_calls_fragments();
            if !flushed.is_empty() {
                changed = true;
                if !kept_members.iter().any(|(key, _)| *key == "tool_calls") {
                    kept_members.push(("tool_calls", String::new()));
                }
                kept_calls.extend(flushed);
            }
        }
        if !changed {
            return None;
        }
        let rendered_calls = format!("[{}]", kept_calls.join(","));
        let delta = OrderedObject::render(
            kept_members
                .iter()
                .filter(|(key, _)| *key != "tool_calls" || !kept_calls.is_empty())
                .map(|(key, value)| {
                    if *key == "tool_calls" {
                        (*key, rendered_calls.as_str())
                    } else {
                        (*key, value.as_str())
                    }
                }),
        );
        let mut choice: Vec<(&str, &str)> = members
            .0
            .iter()
            .map(|(key, value)| {
                if key == "delta" {
                    (key.as_ref(), delta.as_str())
                } else {
                    (key.as_ref(), value.get())
                }
            })
            .collect();
        if members.get("delta").is_none() {
            choice.push(("delta", delta.as_str()));
        }
        Some(OrderedObject::render(choice))
    }

    /// A chunk as the client gets it (`None`: unchanged), whether nothing is left of it once
    /// the retrieval tool's fragments are gone, and whether it is the usage chunk.
    fn chunk(&mut self, data: &str) -> Option<(Option<String>, bool, bool)> {
        let chunk = object(data).ok()?;
        let text_of = |key: &str| {
            chunk
                .get(key)
                .and_then(string_value)
                .map(|v| v.into_owned())
        };
        // The round's identity is the first that is not empty: Azure OpenAI streams begin with
        // a content filter chunk whose id and model are `""` and `created` is 0.
        if self.id.is_none() {
            self.id = text_of("id").filter(|id| !id.is_empty());
        }
        if self.model.is_none() {
            self.model = text_of("model").filter(|model| !model.is_empty());
        }
        if self.created.is_none() {
            self.created = chunk
                .get("created")
                .filter(|created| !is_null(created) && created.get() != "0")
                .map(|created| created.get().to_owned());
        }
        if self.first_id.is_none() {
            self.first_id = self.id.clone();
        }
        let usage = chunk.get("usage").filter(|u| !is_null(u));
        if let Some(usage) = usage {
            self.usage = serde_json::from_str(usage.get()).ok();
        }
        // `stream_options.include_usage`: a last chunk with no choices and the round's usage.
        let usage_chunk = usage.is_some()
            && chunk
                .get("choices")
                .and_then(|c| array(c.get()).ok())
                .is_some_and(|c| c.is_empty());
        let replace_id =
            self.round > 0 && self.first_id.is_some() && text_of("id") != self.first_id;
        let first_id = self.first_id.as_deref().map(quote).unwrap_or_default();
        let mut changed = replace_id;
        let mut emptied = false;
        let mut choices_text = None;
        if let Some(choices) = chunk.get("choices").and_then(|c| array(c.get()).ok()) {
            let mut rendered = Vec::with_capacity(choices.len());
            for choice in &choices {
                match self.choice(choice) {
                    Some(text) => {
                        changed = true;
                        // A chunk that carried only the retrieval tool's fragments.
                        emptied |= choices.len() == 1 && is_bare_choice(&text);
                        rendered.push(text);
                    }
                    None => rendered.push(choice.get().to_owned()),
                }
            }
            choices_text = Some(format!("[{}]", rendered.join(",")));
        }
        if !changed {
            return Some((None, false, usage_chunk));
        }
        let choices_text = choices_text.unwrap_or_default();
        let rendered =
            OrderedObject::render(chunk.0.iter().map(|(key, value)| match key.as_ref() {
                "id" if replace_id => (key.as_ref(), first_id.as_str()),
                "choices" if !choices_text.is_empty() => (key.as_ref(), choices_text.as_str()),
                _ => (key.as_ref(), value.get()),
            }));
        let emptied = emptied && usage.is_none();
        Some((Some(rendered), emptied, usage_chunk))
    }

    /// The round's completion, as a non-streamed response.
    fn assembled(&self) -> String {
        let mut message: Vec<(String, String)> = vec![("role".into(), "\"assistant\"".into())];
        // One `content`: the text, or the value that came (a round where both came with
        // something in them is not continued), or `null`.
        let content = self
            .delta_members
            .iter()
            .find(|(key, _)| key == "content")
            .map(|(key, member)| member.value(key))
            .or_else(|| {
                self.texts
                    .iter()
                    .find(|(key, text)| key == "content" && !text.is_empty())
                    .map(|(_, text)| quote(text))
            });
        message.push(("content".into(), content.unwrap_or_else(|| "null".into())));
        for (key, text) in &self.texts {
            if key != "content" && !text.is_empty() {
                message.push((key.clone(), quote(text)));
            }
        }
        for (key, member) in &self.delta_members {
            if key != "content" {
                message.push((key.clone(), member.value(key)));
            }
        }
        if !self.calls.is_empty() {
            let calls: Vec<String> = self
                .calls
                .iter()
                .map(|call| {
                    let function = OrderedObject::render([
                        ("name", quote(&call.name).as_str()),
                        ("arguments", quote(&call.arguments).as_str()),
                    ]);
                    let id = quote(&call.id);
                    let mut members =
                        vec![("type", "\"function\""), ("function", function.as_str())];
                    if !call.id.is_empty() {
                        members.insert(0, ("id", id.as_str()));
                    }
                    members.extend(
                        call.extras
                            .iter()
                            .map(|(key, value)| (key.as_str(), value.as_str())),
                    );
                    OrderedObject::render(members)
                })
                .collect();
            message.push(("tool_calls".into(), format!("[{}]", calls.join(","))));
        }
        let message = OrderedObject::render(message.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let finish_reason = self
            .finish_reason
            .as_deref()
            .map_or_else(|| "null".into(), quote);
        let choice = OrderedObject::render([
            ("index", "0"),
            ("message", message.as_str()),
            ("finish_reason", finish_reason.as_str()),
        ]);
        let usage = self
            .usage
            .as_ref()
            .map_or_else(|| "null".into(), |usage| usage.to_string());
        let id = self.id.as_deref().map_or_else(|| "\"\"".into(), quote);
        let model = self.model.as_deref().map_or_else(|| "\"\"".into(), quote);
        let created = self.created.clone().unwrap_or_else(|| "0".into());
        OrderedObject::render([
            ("id", id.as_str()),
            ("object", "\"chat.completion\""),
            ("created", created.as_str()),
            ("model", model.as_str()),
            ("choices", format!("[{choice}]").as_str()),
            ("usage", usage.as_str()),
        ])
    }

    /// Sends the held ending chunks: a finish reason of `tool_calls` becomes `stop` when the
    /// client got none of the calls (they were ours, or dropped past the limit), and the usage
    /// is summed over the rounds.
    fn release(&mut self, out: &mut Vec<Bytes>) {
        let none_for_the_client = !self.calls.is_empty()
            && self
                .calls
                .iter()
                .all(|call| matches!(call.owner, Some(Owner::Layer | Owner::Unknown)));
        for held in std::mem::take(&mut self.held) {
            let Some(data) = held.data else {
                out.push(held.raw);
                continue;
            };
            let mut splice = Splice::default();
            if let Ok(chunk) = object(&data) {
                if none_for_the_client
                    && let Some(choices) = chunk.get("choices").and_then(|c| array(c.get()).ok())
                {
                    for choice in choices {
                        if let Ok(choice) = object(choice.get())
                            && let Some(reason) = choice
                                .get("finish_reason")
                                .filter(|r| r.get() == "\"tool_calls\"")
                            && let Some(span) = span_of(&data, reason)
                        {
                            splice.replace(span, "\"stop\"".into());
                        }
                    }
                }
                let _ = sum_root_usage(&data, &chunk, "usage", &self.earlier_usage, &mut splice);
            }
            if splice.is_empty() && !held.changed {
                out.push(held.raw);
                continue;
            }
            let data = splice.apply(&data).unwrap_or(data);
            out.push(crate::sse::encode(None, &data));
        }
    }
}

/// An error event in the form OpenAI streams them.
fn error_chunk(message: &str, code: &str) -> Bytes {
    let error = OrderedObject::render([
        ("message", quote(message).as_str()),
        ("type", "\"ccr_error\""),
        ("param", "null"),
        ("code", quote(code).as_str()),
    ]);
    crate::sse::encode(None, &OrderedObject::render([("error", error.as_str())]))
}

/// Whether a rewritten choice carries nothing: an empty delta and no finish reason.
fn is_bare_choice(choice: &str) -> bool {
    object(choice).is_ok_and(|choice| {
        choice.get("delta").is_none_or(|d| d.get() == "{}")
            && choice.get("finish_reason").is_none_or(is_null)
            && choice.get("logprobs").is_none_or(is_null)
    })
}

impl StreamFilter for ChatStream {
    fn event(&mut self, event: SseEvent, out: &mut Vec<Bytes>) {
        if self.given_up.is_some() {
            return; // The client was told; nothing more of the round goes out.
        }
        let ended_before = self.finish_reason.is_some() || !self.held.is_empty();
        let Some(data) = event.data.as_deref() else {
            // Comments and keep-alives: after the round's end they wait with it, counted as
            // its chunks are (an upstream may send them for as long as it keeps the stream
            // open). Past the limit the round's end is final: it goes out, and they after it.
            if ended_before && self.keep(event.raw.len()) {
                self.held.push(HeldChunk {
                    raw: event.raw,
                    data: None,
                    changed: false,
                });
            } else {
                self.release(out);
                out.push(event.raw);
            }
            return;
        };
        if data.trim() == "[DONE]" {
            if !self.failed && self.lost_a_call() {
                // The round ends without a finish chunk.
                self.give_up(UNNAMED_PAST_LIMIT);
                self.tell_given_up(out);
                return;
            }
            let held = self.keep(event.raw.len());
            self.held.push(HeldChunk {
                raw: event.raw,
                data: None,
                changed: false,
            });
            if !held {
                self.release(out);
            }
            return;
        }
        let error = object(data).is_ok_and(|chunk| chunk.get("error").is_some_and(|e| !is_null(e)));
        if error {
            self.failed = true;
            self.release(out);
            out.push(event.raw);
            return;
        }
        let Some((rewritten, emptied, usage_chunk)) = self.chunk(data) else {
            out.push(event.raw); // Not a chunk: not the layer's business.
            return;
        };
        if self.given_up.is_some() {
            self.tell_given_up(out);
            return;
        }
        if emptied {
            return;
        }
        let ends = ended_before || self.finish_reason.is_some() || usage_chunk;
        if ends {
            let changed = rewritten.is_some();
            let data = rewritten.unwrap_or_else(|| data.to_owned());
            let held = self.keep(data.len());
            self.held.push(HeldChunk {
                raw: event.raw,
                data: Some(data),
                changed,
            });
            if !held {
                // Past the limit the round is not continued: its end is final.
                self.release(out);
            }
            return;
        }
        out.push(match rewritten {
            Some(data) => crate::sse::encode(event.event.as_deref(), &data),
            None => event.raw,
        });
    }

    fn end_round(&mut self) -> Option<String> {
        if self.failed || self.finish_reason.is_none() || self.over_limit || self.unreplayable {
            return None;
        }
        Some(self.assembled())
    }

    fn cut_short(&self) -> bool {
        !self.failed && self.finish_reason.is_none()
    }

    fn next_round(&mut self) {
        if let Some(usage) = self.usage.take() {
            self.earlier_usage.push(usage);
        }
        self.round += 1;
        self.calls.clear();
        self.call_positions.clear();
        self.last_unindexed = None;
        self.calls_past_limit = 0;
        self.client_calls = 0;
        self.texts.clear();
        self.delta_members.clear();
        self.id = None;
        self.model = None;
        self.created = None;
        self.finish_reason = None;
        self.held.clear();
        self.bytes = 0;
        self.over_limit = false;
        self.unreplayable = false;
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        if !self.failed && self.lost_a_call() {
            // The upstream ended with neither a finish chunk nor `[DONE]`.
            self.give_up(UNNAMED_PAST_LIMIT);
            self.tell_given_up(out);
            return;
        }
        self.release(out);
    }

    fn error_event(&mut self, message: &str) -> Bytes {
        error_chunk(message, "ccr_continuation_failed")
    }

    fn gave_up(&self) -> bool {
        // Set while handling an event, whose handling then pushes the error chunk.
        self.given_up.is_some()
    }
}

impl Adapter for OpenAiChat {
    fn name(&self) -> &'static str {
        "openai-chat"
    }

    fn matches(&self, method: &http::Method, uri: &http::Uri) -> bool {
        method == http::Method::POST
            && uri
                .path()
                .trim_end_matches('/')
                .ends_with("/chat/completions")
    }

    fn inspect(
        &self,
        body: &str,
        tool_name: &str,
        min_bytes: usize,
    ) -> Result<Inspection, Malformed> {
        let request: ChatRequest<'_> =
            serde_json::from_str(body).map_err(|_| Malformed("not a chat request"))?;
        if request
            .n
            .0
            .is_some_and(|n| n.get().parse::<u64>().is_ok_and(|n| n > 1))
        {
            return Ok(Inspection::Skip("n > 1"));
        }
        let mut outputs = Vec::new();
        // Cheap test first: most requests carry no tool output big enough to matter.
        let is_candidate = |message: &ChatMessage<'_>| {
            message.role.is("\"tool\"")
                && message
                    .content
                    .value()
                    .is_some_and(|c| c.get().len() >= min_bytes)
        };
        let any_candidate = request.messages.iter().any(is_candidate);
        let mut context = Context::default();
        for message in request.messages.iter().filter(|_| any_candidate) {
            if !is_candidate(message) {
                context.read(message);
                continue;
            }
            let Some(content) = message.content.value() else {
                continue;
            };
            let call_id = message.tool_call_id.value().and_then(string_value);
            let (last_user, tool, arguments) = context.of(call_id.as_deref());
            if tool.as_deref() == Some(tool_name) {
                continue; // Our own answers are never compressed.
            }
            let query = if arguments.is_empty() {
                last_user
            } else {
                format!("{last_user}\n{arguments}")
            };
            let strings: Vec<&RawValue> = if content.get().starts_with('"') {
                vec![content]
            } else if content.get().starts_with('[') {
                array(content.get())?
                    .into_iter()
                    .filter_map(|part| object(part.get()).ok())
                    .filter(|part| {
                        part.get("type").and_then(string_value).as_deref() == Some("text")
                    })
                    .filter_map(|part| part.get("text"))
                    .collect()
            } else {
                Vec::new()
            };
            for raw in strings {
                if raw.get().len() < min_bytes {
                    continue;
                }
                let (Some(span), Some(text)) = (span_of(body, raw), string_value(raw)) else {
                    continue;
                };
                outputs.push(ToolOutput {
                    span,
                    text: text.into_owned(),
                    query: query.clone(),
                    tool_name: tool.clone(),
                });
            }
        }
        let redeemable = !outputs.is_empty() && redeemable(&request, tool_name);
        Ok(Inspection::Outputs {
            outputs,
            redeemable,
        })
    }

    fn inject_tool(
        &self,
        body: &str,
        tool_name: &str,
        splice: &mut Splice,
    ) -> Result<(), Malformed> {
        append_to_root_array(body, "tools", tool_definition(tool_name), splice)
    }

    fn read_turn(&self, response: &str, tool_name: &str) -> Result<Turn, Malformed> {
        let root = object(response)?;
        let choices = array(root.get("choices").ok_or(Malformed("no choices"))?.get())?;
        let [choice] = choices.as_slice() else {
            return Ok(Turn::Other);
        };
        let choice = object(choice.get())?;
        let Some(message) = choice.get("message") else {
            return Ok(Turn::Other);
        };
        let calls = response_calls(&object(message.get())?)?;
        if calls.is_empty() || !calls.iter().all(|call| call.is(tool_name)) {
            return Ok(Turn::Other);
        }
        Ok(Turn::Retrieve(
            calls
                .iter()
                .enumerate()
                .map(|(index, call)| Call {
                    id: call.id(index),
                    arguments: call.arguments.clone(),
                })
                .collect(),
        ))
    }

    fn usage(&self, response: &str) -> Option<serde_json::Value> {
        let root = object(response).ok()?;
        let usage = root.get("usage").filter(|u| !is_null(u))?;
        serde_json::from_str(usage.get()).ok()
    }

    fn continuation(
        &self,
        request: &str,
        response: &str,
        answers: &[Answer],
        force_final: bool,
    ) -> Result<String, Malformed> {
        let root = object(request)?;
        if root.get("messages").is_none() {
            return Err(Malformed("no messages"));
        }

        let response_root = object(response)?;
        let choices = array(
            response_root
                .get("choices")
                .ok_or(Malformed("no choices"))?
                .get(),
        )?;
        let choice = object(choices.first().ok_or(Malformed("no choice"))?.get())?;
        let message = object(choice.get("message").ok_or(Malformed("no message"))?.get())?;
        // The assistant message as the model sent it, less what only responses carry, so that
        // provider-specific fields (reasoning, signatures) go back as they came.
        let calls = response_calls(&message)?;
        let replayed_calls = format!(
            "[{}]",
            calls
                .iter()
                .enumerate()
                .map(|(index, call)| call.replayed(index))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut members: Vec<(&str, &str)> = vec![("role", "\"assistant\"")];
        for (key, value) in &message.0 {
            let keep = match key.as_ref() {
                "role" | "annotations" => false,
                "content" => true,
                _ => !is_null(value),
            };
            if key == "tool_calls" {
                members.push(("tool_calls", replayed_calls.as_str()));
            } else if keep {
                members.push((key.as_ref(), value.get()));
            }
        }
        if message.get("content").is_none() {
            members.insert(1, ("content", "null"));
        }
        let mut appended = OrderedObject::render(members);
        for answer in answers {
            let tool_message = OrderedObject::render([
                ("role", "\"tool\""),
                ("tool_call_id", quote(&answer.call_id).as_str()),
                ("content", quote(&answer.text).as_str()),
            ]);
            appended.push(',');
            appended.push_str(&tool_message);
        }

        let mut splice = Splice::default();
        append_to_root_array(request, "messages", appended, &mut splice)?;
        if force_final {
            set_root_member(request, &root, "tool_choice", "\"none\"", &mut splice)?;
        }
        splice.apply(request).ok_or(Malformed("overlapping edits"))
    }

    fn stream_filter(&self, tool_name: &str, limit: usize) -> Box<dyn StreamFilter> {
        Box::new(ChatStream::new(tool_name, limit))
    }

    fn finalize(
        &self,
        response: &str,
        tool_name: &str,
        earlier_usage: &[serde_json::Value],
    ) -> Result<Option<String>, Malformed> {
        let root = object(response)?;
        let mut splice = Splice::default();
        if let Some(choices) = root.get("choices") {
            for choice in array(choices.get())? {
                // A choice that is not an object holds no call of ours: left as it is.
                let Ok(choice) = object(choice.get()) else {
                    continue;
                };
                let Some(message_raw) = choice.get("message") else {
                    continue;
                };
                let message = object(message_raw.get())?;
                let calls = response_calls(&message)?;
                let kept: Vec<&str> = calls
                    .iter()
                    .filter(|call| !call.is(tool_name))
                    .map(|call| call.raw.get())
                    .collect();
                if kept.len() == calls.len() {
                    continue;
                }
                let kept_array = format!("[{}]", kept.join(","));
                let members = message.0.iter().filter_map(|(key, value)| {
                    if key == "tool_calls" {
                        (!kept.is_empty()).then_some((key.as_ref(), kept_array.as_str()))
                    } else {
                        Some((key.as_ref(), value.get()))
                    }
                });
                let rendered = OrderedObject::render(members);
                splice.replace(
                    span_of(response, message_raw).ok_or(Malformed("message"))?,
                    rendered,
                );
                if kept.is_empty()
                    && let Some(reason) = choice
                        .get("finish_reason")
                        .filter(|r| r.get() == "\"tool_calls\"")
                {
                    splice.replace(
                        span_of(response, reason).ok_or(Malformed("finish_reason"))?,
                        "\"stop\"".into(),
                    );
                }
            }
        }
        sum_root_usage(response, &root, "usage", earlier_usage, &mut splice)?;
        if splice.is_empty() {
            return Ok(None);
        }
        splice
            .apply(response)
            .map(Some)
            .ok_or(Malformed("overlapping edits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: &str = "ccr_retrieve";

    fn outputs(body: &str) -> (Vec<ToolOutput>, bool) {
        // A big tool output, so that redeemability is evaluated.
        let body = &body.replacen(
            "\"messages\":[]",
            r#""messages":[{"role":"tool","content":"x"}]"#,
            1,
        );
        match OpenAiChat.inspect(body, TOOL, 0).unwrap() {
            Inspection::Outputs {
                outputs,
                redeemable,
            } => (outputs, redeemable),
            Inspection::Skip(reason) => panic!("skipped: {reason}"),
        }
    }

    #[test]
    fn finds_string_and_part_outputs_with_their_context() {
        let body = r#"{"model":"m","messages":[
            {"role":"user","content":"why did the build fail?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"bash","arguments":"{\"cmd\":\"make\"}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"line1\nerror: x"},
            {"role":"tool","tool_call_id":"c2","content":[{"type":"text","text":"part \u00e9"},{"type":"image_url","image_url":{}}]}
        ]}"#;
        let (found, redeemable) = outputs(body);
        assert!(redeemable);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].text, "line1\nerror: x");
        assert_eq!(&body[found[0].span.clone()], r#""line1\nerror: x""#);
        assert_eq!(found[0].tool_name.as_deref(), Some("bash"));
        assert_eq!(
            found[0].query,
            "why did the build fail?\n{\"cmd\":\"make\"}"
        );
        assert_eq!(found[1].text, "part \u{e9}");
        assert_eq!(found[1].tool_name, None);
    }

    #[test]
    fn skips_several_choices_but_not_streams() {
        assert!(matches!(
            OpenAiChat
                .inspect(r#"{"messages":[],"n":2}"#, TOOL, 0)
                .unwrap(),
            Inspection::Skip(_)
        ));
        assert!(matches!(
            OpenAiChat
                .inspect(r#"{"messages":[],"stream":true}"#, TOOL, 0)
                .unwrap(),
            Inspection::Outputs { .. }
        ));
        // Duplicate members make the request unreadable: it passes through.
        assert!(
            OpenAiChat
                .inspect(r#"{"messages":[],"n":1,"n":1}"#, TOOL, 0)
                .is_err()
        );
        assert!(OpenAiChat.inspect("[1]", TOOL, 0).is_err());
        assert!(OpenAiChat.inspect(r#"{"model":"x"}"#, TOOL, 0).is_err());
    }

    #[test]
    fn redeemable_only_when_the_model_can_call_the_tool() {
        let cases = [
            (r#"{"messages":[]}"#, true),
            (r#"{"messages":[],"tool_choice":"auto"}"#, true),
            (r#"{"messages":[],"tool_choice":"none"}"#, false),
            (
                r#"{"messages":[],"tool_choice":{"type":"function","function":{"name":"bash"}}}"#,
                false,
            ),
            (
                r#"{"messages":[],"tools":[{"type":"function","function":{"name":"ccr_retrieve"}}]}"#,
                false,
            ),
            (
                r#"{"messages":[],"tools":[{"type":"function","function":{"name":"bash"}}]}"#,
                true,
            ),
            (r#"{"messages":[],"functions":[]}"#, false),
        ];
        for (body, expected) in cases {
            assert_eq!(outputs(body).1, expected, "{body}");
        }
    }

    #[test]
    fn injects_after_the_clients_tools() {
        let tool = tool_definition(TOOL);
        let cases = [
            (
                r#"{"messages":[] }"#,
                format!(r#"{{"messages":[] ,"tools":[{tool}]}}"#),
            ),
            (
                r#"{"messages":[],"tools":null}"#,
                format!(r#"{{"messages":[],"tools":[{tool}]}}"#),
            ),
            (
                r#"{"messages":[],"tools":[ ]}"#,
                format!(r#"{{"messages":[],"tools":[ {tool}]}}"#),
            ),
            (
                r#"{"tools":[{"a":1}],"messages":[]}"#,
                format!(r#"{{"tools":[{{"a":1}},{tool}],"messages":[]}}"#),
            ),
        ];
        for (body, expected) in cases {
            let mut splice = Splice::default();
            OpenAiChat.inject_tool(body, TOOL, &mut splice).unwrap();
            assert_eq!(splice.apply(body).unwrap(), expected);
        }
        let parsed: serde_json::Value = serde_json::from_str(&tool).unwrap();
        assert_eq!(parsed["function"]["parameters"]["required"][0], "hash");
    }

    const RESPONSE: &str = r#"{"id":"r1","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,"refusal":null,"annotations":[],"tool_calls":[{"id":"call_1","type":"function","function":{"name":"ccr_retrieve","arguments":"{\"hash\":\"abc\"}"}}]}}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;

    #[test]
    fn reads_retrieval_turns() {
        assert_eq!(
            OpenAiChat.read_turn(RESPONSE, TOOL).unwrap(),
            Turn::Retrieve(vec![Call {
                id: "call_1".into(),
                arguments: r#"{"hash":"abc"}"#.into()
            }])
        );
        let mixed = RESPONSE.replace(
            r#"}}]}}]"#,
            r#"}},{"id":"call_2","type":"function","function":{"name":"bash","arguments":"{}"}}]}}]"#,
        );
        assert_eq!(OpenAiChat.read_turn(&mixed, TOOL).unwrap(), Turn::Other);
        let answer = r#"{"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(OpenAiChat.read_turn(answer, TOOL).unwrap(), Turn::Other);
    }

    #[test]
    fn retrieval_calls_are_recognised_by_name_alone() {
        // Arguments as an object, and no id: a server that only mostly speaks the format.
        let odd = r#"{"choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"ccr_retrieve","arguments":{"hash":"abc"}}}]}}]}"#;
        assert_eq!(
            OpenAiChat.read_turn(odd, TOOL).unwrap(),
            Turn::Retrieve(vec![Call {
                id: "call_ccr_0".into(),
                arguments: r#"{"hash":"abc"}"#.into()
            }])
        );
        let answers = [Answer {
            call_id: "call_ccr_0".into(),
            text: "orig".into(),
        }];
        let next = OpenAiChat
            .continuation(r#"{"messages":[]}"#, odd, &answers, false)
            .unwrap();
        let next: serde_json::Value = serde_json::from_str(&next).unwrap();
        assert_eq!(next["messages"][0]["tool_calls"][0]["id"], "call_ccr_0");
        assert_eq!(next["messages"][1]["tool_call_id"], "call_ccr_0");
        // Mixed with a client call: ours is stripped whatever its shape.
        let mixed = odd.replace(
            r#"}}}]}}]"#,
            r#"}}},{"id":"c2","type":"function","function":{"name":"bash","arguments":"{}"}}]}}]"#,
        );
        assert_eq!(OpenAiChat.read_turn(&mixed, TOOL).unwrap(), Turn::Other);
        let out = OpenAiChat.finalize(&mixed, TOOL, &[]).unwrap().unwrap();
        assert!(!out.contains(TOOL), "{out}");
        assert!(out.contains("c2"));
    }

    #[test]
    fn the_query_is_bounded() {
        let question = "why ".repeat(5_000);
        let body = serde_json::json!({"messages": [
            {"role": "user", "content": question},
            {"role": "tool", "tool_call_id": "x", "content": "output"}
        ]})
        .to_string();
        let (found, _) = outputs(&body);
        assert!(found[0].query.len() <= MAX_QUESTION_BYTES);
    }

    #[test]
    fn continuation_appends_the_turn_and_answers() {
        let request =
            r#"{"model":"m", "messages":[{"role":"user","content":"q"}],"tool_choice":"auto"}"#;
        let answers = [Answer {
            call_id: "call_1".into(),
            text: "orig\n".into(),
        }];
        let next = OpenAiChat
            .continuation(request, RESPONSE, &answers, false)
            .unwrap();
        assert_eq!(
            next,
            r#"{"model":"m", "messages":[{"role":"user","content":"q"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"ccr_retrieve","arguments":"{\"hash\":\"abc\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"orig\n"}],"tool_choice":"auto"}"#
        );
        let last = OpenAiChat
            .continuation(request, RESPONSE, &answers, true)
            .unwrap();
        assert!(last.ends_with(r#""tool_choice":"none"}"#));
        let without_choice = r#"{"messages":[{"role":"user","content":"q"}]}"#;
        let last = OpenAiChat
            .continuation(without_choice, RESPONSE, &answers, true)
            .unwrap();
        assert!(last.ends_with(r#"],"tool_choice":"none"}"#), "{last}");
    }

    #[test]
    fn finalize_strips_our_calls_and_sums_usage() {
        let mixed = RESPONSE.replace(
            r#"}}]}}]"#,
            r#"}},{"id":"call_2","type":"function","function":{"name":"bash","arguments":"{}"}}]}}]"#,
        );
        let out = OpenAiChat.finalize(&mixed, TOOL, &[]).unwrap().unwrap();
        assert!(!out.contains(TOOL));
        assert!(out.contains(r#""finish_reason":"tool_calls""#));
        assert!(out.contains("call_2"));

        let out = OpenAiChat
            .finalize(
                RESPONSE,
                TOOL,
                &[serde_json::json!({"prompt_tokens":1,"completion_tokens":1,"total_tokens":2})],
            )
            .unwrap()
            .unwrap();
        assert!(!out.contains(TOOL));
        assert!(!out.contains("tool_calls\":"), "{out}");
        assert!(out.contains(r#""finish_reason":"stop""#));
        assert!(
            out.contains(r#""usage":{"prompt_tokens":11,"completion_tokens":6,"total_tokens":17}"#)
        );
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["choices"][0]["message"]["role"], "assistant");

        let answer = r#"{"choices":[{"message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(OpenAiChat.finalize(answer, TOOL, &[]).unwrap(), None);
    }

    fn feed(filter: &mut ChatStream, stream: &str) -> String {
        let mut parser = crate::sse::SseParser::new(1 << 20);
        let mut out = Vec::new();
        let mut events = Vec::new();
        parser.push(stream.as_bytes(), |e| events.push(e)).unwrap();
        parser.finish(|e| events.push(e));
        for event in events {
            filter.event(event, &mut out);
        }
        out.iter().map(|b| String::from_utf8_lossy(b)).collect()
    }

    const CALL_ROUND: &str = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Checking. \"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"ccr_retrieve\",\"arguments\":\"{\\\"hash\\\":\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"abc\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,\"total_tokens\":12}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn a_retrieval_round_is_assembled_as_a_response_and_held_back() {
        let mut filter = ChatStream::new(TOOL, 1 << 20);
        let forwarded = feed(&mut filter, CALL_ROUND);
        assert_eq!(
            forwarded,
            CALL_ROUND.split("\n\n").next().unwrap().to_owned() + "\n\n",
            "only the text goes out at once"
        );
        let response = filter.end_round().unwrap();
        match OpenAiChat.read_turn(&response, TOOL).unwrap() {
            Turn::Retrieve(calls) => {
                assert_eq!(calls[0].id, "call_1");
                assert_eq!(calls[0].arguments, r#"{"hash":"abc"}"#);
            }
            Turn::Other => panic!("not a retrieval: {response}"),
        }
        let answers = [Answer {
            call_id: "call_1".into(),
            text: "original".into(),
        }];
        let next = OpenAiChat
            .continuation(
                r#"{"messages":[],"stream":true}"#,
                &response,
                &answers,
                false,
            )
            .unwrap();
        let next: serde_json::Value = serde_json::from_str(&next).unwrap();
        assert_eq!(next["messages"][0]["content"], "Checking. ");
        assert_eq!(next["messages"][1]["content"], "original");

        filter.next_round();
        let second = "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Done.\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"c2\",\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":1,\"total_tokens\":31}}\n\ndata: [DONE]\n\n";
        let forwarded = feed(&mut filter, second);
        assert_eq!(
            forwarded,
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Done.\"},\"finish_reason\":null}]}\n\n"
        );
        assert!(filter.end_round().is_some());
        let mut out = Vec::new();
        filter.finish(&mut out);
        let tail: String = out.iter().map(|b| String::from_utf8_lossy(b)).collect();
        assert!(tail.contains("\"finish_reason\":\"stop\""));
        assert!(
            tail.contains(
                r#""usage":{"prompt_tokens":40,"completion_tokens":3,"total_tokens":43}"#
            ),
            "{tail}"
        );
        assert!(tail.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn an_unfinished_or_oversized_round_is_not_continued() {
        let cut = &CALL_ROUND[..CALL_ROUND
            .find("data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},")
            .unwrap()];
        let mut filter = ChatStream::new(TOOL, 1 << 20);
        feed(&mut filter, cut);
        assert_eq!(filter.end_round(), None);
        assert!(filter.cut_short(), "no finish_reason came");
        let mut small = ChatStream::new(TOOL, 8);
        // Past the limit nothing is held: the round's end goes out as it comes.
        let mut client = feed(&mut small, CALL_ROUND);
        assert_eq!(small.end_round(), None, "more than the limit was assembled");
        assert!(!small.cut_short());
        let mut out = Vec::new();
        small.finish(&mut out);
        client.extend(out.iter().map(|b| String::from_utf8_lossy(b).into_owned()));
        assert!(!client.contains(TOOL), "{client}");
        assert!(
            client.contains("\"finish_reason\":\"stop\""),
            "our call is gone: {client}"
        );
        assert!(client.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn odd_elements_do_not_let_our_calls_through() {
        let response = r#"{"choices":[5,{"index":1,"message":{"role":"assistant","content":null,"tool_calls":[7,{"id":"c","type":"function","function":{"name":"ccr_retrieve","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#;
        let finalized = OpenAiChat.finalize(response, TOOL, &[]).unwrap().unwrap();
        assert!(!finalized.contains(TOOL), "{finalized}");
        assert!(
            finalized.contains("[5,") && finalized.contains("[7]"),
            "{finalized}"
        );
    }

    /// A chunk carrying one tool call fragment.
    fn call_chunk(fragment: &str) -> String {
        format!(
            "data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{fragment}]}},\"finish_reason\":null}}]}}\n\n"
        )
    }

    fn finish_chunk(reason: &str) -> String {
        format!(
            "data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{reason}\"}}]}}\n\n"
        )
    }

    /// Bytes the filter holds for the round: what it assembled, the fragments it holds back,
    /// and the state of each call.
    fn held_bytes(filter: &ChatStream) -> usize {
        let calls: usize = filter
            .calls
            .iter()
            .map(|call| {
                std::mem::size_of::<StreamedCall>()
                    + call.id.len()
                    + call.name.len()
                    + call.arguments.len()
                    + call.pending.iter().map(String::len).sum::<usize>()
            })
            .sum();
        let texts: usize = filter.texts.iter().map(|(_, text)| text.len()).sum();
        calls + texts
    }

    #[test]
    fn an_unnamed_call_holds_no_more_than_the_limit() {
        for name in [TOOL, "bash"] {
            let mut filter = ChatStream::new(TOOL, 4096);
            let mut stream = call_chunk(
                r#"{"index":0,"id":"call_1","type":"function","function":{"arguments":""}}"#,
            );
            for _ in 0..1000 {
                let piece = "x".repeat(100);
                stream.push_str(&call_chunk(&format!(
                    r#"{{"index":0,"function":{{"arguments":"{piece}"}}}}"#
                )));
            }
            let client = feed(&mut filter, &stream);
            assert!(
                held_bytes(&filter) <= 4096,
                "{} bytes held",
                held_bytes(&filter)
            );
            // It could still be the retrieval tool's: none of it went out.
            assert_eq!(client, "");
            let end = call_chunk(&format!(r#"{{"index":0,"function":{{"name":"{name}"}}}}"#))
                + &finish_chunk("tool_calls")
                + "data: [DONE]\n\n";
            let mut client = feed(&mut filter, &end);
            assert_eq!(filter.end_round(), None, "over the limit: not continued");
            assert!(!filter.cut_short());
            let mut out = Vec::new();
            filter.finish(&mut out);
            client.extend(out.iter().map(|b| String::from_utf8_lossy(b).into_owned()));
            assert!(!client.contains(TOOL), "{client}");
            if name == TOOL {
                assert!(client.contains("\"finish_reason\":\"stop\""), "{client}");
                assert!(client.ends_with("data: [DONE]\n\n"), "{client}");
            } else {
                // The client's call lost its first fragments: the client is told, and gets
                // nothing more of the round.
                assert!(client.starts_with("data: {\"error\":"), "{client}");
                assert!(client.contains("\"code\":\"ccr_stream_over_limit\""));
                assert_eq!(client.matches("data: ").count(), 1, "{client}");
            }
        }
    }

    #[test]
    fn calls_opened_past_the_limit_hold_no_more_than_their_state() {
        let mut filter = ChatStream::new(TOOL, 4096);
        let text = "x".repeat(5000);
        let mut stream = format!(
            "data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
        );
        for index in 0..1000 {
            let id = "i".repeat(1000);
            stream.push_str(&call_chunk(&format!(
                r#"{{"index":{index},"id":"{id}","type":"function","function":{{"name":"bash","arguments":"{{}}"}}}}"#
            )));
        }
        stream.push_str(&finish_chunk("tool_calls"));
        let client = feed(&mut filter, &stream);
        assert_eq!(filter.calls.len(), MAX_CALLS_PAST_LIMIT);
        assert!(held_bytes(&filter) <= 4096 + MAX_CALLS_PAST_LIMIT * CALL_STATE_BYTES);
        // The text and the first calls went out as they came, then the client is told.
        let events: Vec<&str> = client.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 2 + MAX_CALLS_PAST_LIMIT, "{client}");
        assert!(events[0].contains(&text));
        assert!(events[1].contains(r#""index":0,"id":"iii"#));
        assert!(events.last().unwrap().starts_with("data: {\"error\":"));
    }

    #[test]
    fn a_finish_chunk_without_delta_releases_calls_never_named() {
        let mut filter = ChatStream::new(TOOL, 1 << 20);
        let stream = call_chunk(
            r#"{"index":0,"id":"call_1","type":"function","function":{"arguments":"{}"}}"#,
        ) + "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"finish_reason\":\"tool_calls\"}]}\n\n"
            + "data: [DONE]\n\n";
        let mut client = feed(&mut filter, &stream);
        let response = filter.end_round().unwrap();
        assert_eq!(OpenAiChat.read_turn(&response, TOOL).unwrap(), Turn::Other);
        let mut out = Vec::new();
        filter.finish(&mut out);
        client.extend(out.iter().map(|b| String::from_utf8_lossy(b).into_owned()));
        let chunks: Vec<serde_json::Value> = client
            .split_terminator("\n\n")
            .filter_map(|event| serde_json::from_str(event.strip_prefix("data: ")?).ok())
            .collect();
        let calls: Vec<&serde_json::Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .collect();
        assert_eq!(calls.len(), 1, "{client}");
        assert_eq!(calls[0]["id"], "call_1");
        assert!(client.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn fragments_without_an_index_are_merged_into_calls() {
        let fragments = [
            r#"{"id":"a","type":"function","function":{"name":"bash","arguments":"{"}}"#,
            // Neither id nor name: the last call goes on.
            r#"{"function":{"arguments":"}"}}"#,
            // Its id and name sent again: still the same call.
            r#"{"id":"a","function":{"name":"bash"}}"#,
            // A name when the last call has one: a call of its own (with no id).
            r#"{"function":{"name":"grep","arguments":"{}"}}"#,
            // A new id: a new call, named in its next fragment.
            r#"{"id":"b","type":"function","function":{"arguments":""}}"#,
            r#"{"function":{"name":"ccr_retrieve","arguments":"{\"hash\":\"h\"}"},"extra_content":{"s":1}}"#,
        ];
        let mut stream: String = fragments.iter().map(|f| call_chunk(f)).collect();
        stream.push_str(&finish_chunk("stop"));
        let mut filter = ChatStream::new(TOOL, 1 << 20);
        let client = feed(&mut filter, &stream);
        assert!(
            !client.contains(TOOL) && !client.contains("\"b\""),
            "{client}"
        );
        for fragment in &fragments[..4] {
            assert!(client.contains(fragment), "{fragment} went out as it came");
        }
        let response: serde_json::Value =
            serde_json::from_str(&filter.end_round().unwrap()).unwrap();
        assert_eq!(
            response["choices"][0]["message"]["tool_calls"],
            serde_json::json!([
                {"id": "a", "type": "function", "function": {"name": "bash", "arguments": "{}"}},
                {"type": "function", "function": {"name": "grep", "arguments": "{}"}},
                {"id": "b", "type": "function",
                    "function": {"name": "ccr_retrieve", "arguments": "{\"hash\":\"h\"}"},
                    "extra_content": {"s": 1}},
            ])
        );
    }

    /// A chunk whose delta is `delta` (JSON).
    fn delta_chunk(delta: &str) -> String {
        format!(
            "data: {{\"id\":\"m1\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}\n\n"
        )
    }

    /// A retrieval round whose content comes in the deltas given (JSON values).
    fn round_with_content(pieces: &[&str]) -> String {
        let mut stream = delta_chunk(r#"{"role":"assistant","content":""}"#);
        for piece in pieces {
            stream.push_str(&delta_chunk(&format!(r#"{{"content":{piece}}}"#)));
        }
        stream.push_str(&call_chunk(
            r#"{"index":0,"id":"c1","type":"function","function":{"name":"ccr_retrieve","arguments":"{\"hash\":\"abc\"}"}}"#,
        ));
        stream + &finish_chunk("tool_calls") + "data: [DONE]\n\n"
    }

    /// Mistral's reasoning models stream `delta.content` as lists of `thinking` and `text`
    /// chunks, one fragment each, after empty strings. The round is replayed with one `content`,
    /// as the non-streamed message carries it: one chunk per block.
    #[test]
    fn content_streamed_as_arrays_is_replayed_as_one_merged_array() {
        let thinking = |text: &str| {
            format!(r#"[{{"type":"thinking","thinking":[{{"type":"text","text":"{text}"}}]}}]"#)
        };
        let text = |text: &str| format!(r#"[{{"type":"text","text":"{text}"}}]"#);
        let stream = round_with_content(&[
            "\"\"",
            &thinking("I need"),
            &thinking(" the log"),
            "\"\"",
            &text("Let me "),
            &text("look."),
        ]);
        let mut filter = ChatStream::new(TOOL, 1 << 20);
        feed(&mut filter, &stream);
        let response = filter.end_round().expect("the round is continued");
        let root = object(&response).unwrap();
        let choice = object(array(root.get("choices").unwrap().get()).unwrap()[0].get()).unwrap();
        let message = object(choice.get("message").unwrap().get()).unwrap();
        let contents: Vec<&str> = message
            .0
            .iter()
            .filter(|(key, _)| key == "content")
            .map(|(_, value)| value.get())
            .collect();
        assert_eq!(
            contents,
            [
                r#"[{"type":"thinking","thinking":[{"type":"text","text":"I need the log"}]},{"type":"text","text":"Let me look."}]"#
            ],
            "{response}"
        );
        assert!(matches!(
            OpenAiChat.read_turn(&response, TOOL).unwrap(),
            Turn::Retrieve(_)
        ));
        let answers = [Answer {
            call_id: "c1".into(),
            text: "original".into(),
        }];
        let next = OpenAiChat
            .continuation(r#"{"messages":[]}"#, &response, &answers, false)
            .unwrap();
        assert_eq!(next.matches("\"content\":").count(), 2, "{next}");
    }

    /// The upstream chooses how deep content parts nest; merging stops at MAX_MERGE_DEPTH, so
    /// pieces nested 50,000 deep (which a recursive merge would overflow the stack on) are kept
    /// as they came.
    #[test]
    fn deeply_nested_content_pieces_are_kept_as_they_came() {
        const DEPTH: usize = 50_000;
        let piece = |leaf: &str| {
            let mut piece = String::from("[");
            piece.push_str(&r#"{"type":"t","t":["#.repeat(DEPTH));
            piece.push_str(leaf);
            piece.push_str(&"]}".repeat(DEPTH));
            piece.push(']');
            piece
        };
        let pieces = [piece("1"), piece("2")];
        let mut filter = ChatStream::new(TOOL, 8 << 20);
        feed(
            &mut filter,
            &round_with_content(&[pieces[0].as_str(), pieces[1].as_str()]),
        );
        let response = filter.end_round().expect("the round is continued");
        // Merged down to the depth limit, the rest verbatim: both leaves, in order.
        let (first, second) = (response.find("[1]").unwrap(), response.find("[2]").unwrap());
        assert!(first < second);
        assert_eq!(response.matches("\"content\":").count(), 1);
    }

    #[test]
    fn content_parts_of_other_kinds_stay_as_they_came() {
        // Different types, members other than the text that differ, and elements that are not
        // parts: nothing to merge.
        let pieces = [
            r#"[{"type":"text","text":"a"},{"type":"refusal","refusal":"b"}]"#,
            r#"[{"type":"refusal","refusal":"c","x":1},{"type":"refusal","refusal":"d","x":2}]"#,
            r#"[{"type":"text","text":["e"]},{"type":"text","text":"f"},7,{"text":"g"},{"text":"h"}]"#,
        ];
        let mut filter = ChatStream::new(TOOL, 1 << 20);
        feed(&mut filter, &round_with_content(&pieces));
        let response: serde_json::Value =
            serde_json::from_str(&filter.end_round().unwrap()).unwrap();
        let joined: Vec<serde_json::Value> = pieces
            .iter()
            .flat_map(|piece| serde_json::from_str::<Vec<serde_json::Value>>(piece).unwrap())
            .collect();
        assert_eq!(
            response["choices"][0]["message"]["content"],
            serde_json::Value::Array(joined)
        );
    }

    /// Content text before or after content lists is a text part of the list (Mistral's
    /// reasoning models may switch between the two).
    #[test]
    fn content_text_beside_content_lists_becomes_text_parts() {
        let part = r#"[{"type":"text","text":"b"}]"#;
        for (pieces, expected) in [
            (["\"a\"", part], r#"[{"type":"text","text":"ab"}]"#),
            ([part, "\"a\""], r#"[{"type":"text","text":"ba"}]"#),
        ] {
            let mut filter = ChatStream::new(TOOL, 1 << 20);
            feed(&mut filter, &round_with_content(&pieces));
            let response = filter.end_round().expect("continued");
            let root = object(&response).unwrap();
            let choice =
                object(array(root.get("choices").unwrap().get()).unwrap()[0].get()).unwrap();
            let message = object(choice.get("message").unwrap().get()).unwrap();
            let contents: Vec<&str> = message
                .0
                .iter()
                .filter(|(key, _)| key == "content")
                .map(|(_, value)| value.get())
                .collect();
            assert_eq!(contents, [expected], "{pieces:?}");
        }
    }

    /// Another member that came both as a string and as another value cannot be rebuilt as
    /// the non-streamed message carries it: the round is not continued, and the client gets
    /// it as it came, without the retrieval tool's call.
    #[test]
    fn a_member_streamed_as_a_string_and_as_another_value_is_not_continued() {
        for deltas in [
            [r#"{"refusal":"a"}"#, r#"{"refusal":["b"]}"#],
            [r#"{"refusal":["b"]}"#, r#"{"refusal":"a"}"#],
        ] {
            let mut stream = String::new();
            for delta in deltas {
                stream.push_str(&format!(
                    "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}\n\n"
                ));
            }
            stream.push_str(&call_chunk(
                r#"{"index":0,"id":"c1","type":"function","function":{"name":"ccr_retrieve","arguments":"{\"hash\":\"abc\"}"}}"#,
            ));
            stream.push_str(&(finish_chunk("tool_calls") + "data: [DONE]\n\n"));
            let mut filter = ChatStream::new(TOOL, 1 << 20);
            let mut client = feed(&mut filter, &stream);
            assert_eq!(filter.end_round(), None, "{deltas:?}");
            assert!(!filter.cut_short());
            let mut out = Vec::new();
            filter.finish(&mut out);
            client.extend(out.iter().map(|b| String::from_utf8_lossy(b).into_owned()));
            assert!(!client.contains(TOOL), "{client}");
            assert!(client.contains("\"finish_reason\":\"stop\""), "{client}");
            assert!(client.ends_with("data: [DONE]\n\n"), "{client}");
        }
    }

    /// Past the limit a call not named yet is dropped (it could be ours); never named by the
    /// round's end, it was the client's: the client is told rather than read a round that
    /// ends with `stop` and lacks it.
    #[test]
    fn a_call_never_named_past_the_limit_ends_the_stream_with_an_error() {
        let mut stream = call_chunk(
            r#"{"index":0,"id":"call_1","type":"function","function":{"arguments":""}}"#,
        );
        for _ in 0..50 {
            let piece = "x".repeat(100);
            stream.push_str(&call_chunk(&format!(
                r#"{{"index":0,"function":{{"arguments":"{piece}"}}}}"#
            )));
        }
        let endings = [
            finish_chunk("tool_calls") + "data: [DONE]\n\n",
            "data: [DONE]\n\n".to_owned(),
            String::new(),
        ];
        for ending in endings {
            let mut filter = ChatStream::new(TOOL, 4096);
            let mut client = feed(&mut filter, &(stream.clone() + &ending));
            assert_eq!(filter.end_round(), None);
            let mut out = Vec::new();
            filter.finish(&mut out);
            client.extend(out.iter().map(|b| String::from_utf8_lossy(b).into_owned()));
            assert!(
                client.starts_with("data: {\"error\":"),
                "{ending}: {client}"
            );
            assert!(client.contains("\"code\":\"ccr_stream_over_limit\""));
            assert_eq!(client.matches("data: ").count(), 1, "{client}");
        }
    }

    /// Keep-alives after the round's end wait with it, within the limit: an upstream sending
    /// them forever without `[DONE]` does not make the filter hold more.
    #[test]
    fn keep_alives_after_the_end_are_held_within_the_limit() {
        let end = CALL_ROUND.find("data: [DONE]").unwrap();
        // Keep-alives, or an upstream that does not stop at `[DONE]`.
        for event in [": keep-alive\n\n", "data: [DONE]\n\n"] {
            let mut stream = CALL_ROUND[..end].to_owned();
            for _ in 0..1000 {
                stream.push_str(event);
            }
            let mut filter = ChatStream::new(TOOL, 4096);
            let client = feed(&mut filter, &stream);
            let held: usize = filter.held.iter().map(|held| held.raw.len()).sum();
            assert!(held <= 4096, "{held} bytes held");
            // Past the limit the round is not continued: its end went out, without our call.
            assert_eq!(filter.end_round(), None);
            assert!(!client.contains(TOOL), "{client}");
            assert!(client.contains("\"finish_reason\":\"stop\""), "{client}");
            assert_eq!(client.matches(event).count(), 1000);
        }
    }

    #[test]
    fn a_few_keep_alives_after_the_end_do_not_stop_the_round_being_continued() {
        let stream = CALL_ROUND.replace("data: [DONE]", ": keep-alive\n\ndata: [DONE]");
        let mut filter = ChatStream::new(TOOL, 1 << 20);
        let client = feed(&mut filter, &stream);
        assert!(!client.contains("keep-alive"), "held with the round's end");
        assert!(filter.end_round().is_some());
    }
}
