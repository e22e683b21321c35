//! [`RedisStore`]: originals in a Redis server, shared by every replica that points at the same
//! server and prefix.
//!
//! # Layout
//! Under the prefix (default `ccr:`), for an entry id `<id>` (already keyed by secret and
//! tenant, so the same output of two tenants has two keys):
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>o:<id>` | hash | `t` tenant, `o` original, `d` digest, `c` created and `a` last access (ms); expires with the entry |
//! | `<prefix>i:<id>` | string | the entry's weight: the mark that the id was issued, kept long after the original (7 days, at least `max_age`) to tell "expired" from "unknown" |
//! | `<prefix>x` | sorted set | every entry id by the time its key expires: the entry count |
//! | `<prefix>w` | hash | every counted entry's weight, by id, with no expiry: what leaves the byte count when the entry does (the issued mark may expire first) |
//! | `<prefix>b` | string | bytes the entries weigh |
//!
//! Every operation is a Lua script (atomic, one round trip; writing an original that is not
//! there yet takes two, since the first only tries a refresh) and uses the server's clock, so
//! replicas with skewed clocks agree on ages. The scripts touch keys they derive from the
//! prefix, which standalone Redis (and Valkey) allows and Redis Cluster does not.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script, ScriptInvocation, Value};

use super::{Entry, Lookup, Retention, Store, StoreFuture, StoreUsage};
use crate::BoxError;
use crate::id::{EntryId, TenantId};

/// What one entry costs in Redis besides its original and tenant: three keys, the hash's other
/// fields, the sorted-set member and Redis's own per-key structures (measured on Redis 7.0 with
/// the default prefix: 554 bytes of `used_memory` per entry of an 8-byte original).
const ENTRY_OVERHEAD: u64 = 512;

/// Default prefix of every key.
const DEFAULT_PREFIX: &str = "ccr:";
/// Default bound of one store call, connecting included.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// What a call's bound grows by per byte it sends (20 ms a MB): a large original must not time
/// out, and trip the breaker, on a healthy server.
const TIMEOUT_PER_BYTE: Duration = Duration::from_nanos(20);
/// Default time calls fail at once after a failure, before one call tries Redis again.
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Default time an id is remembered as issued after its last write.
const DEFAULT_REMEMBER_ISSUED: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Longest time handed to a script, in milliseconds (Lua numbers are doubles: exact up to 2^53).
const MAX_MS: u128 = 1 << 50;
/// Entries whose time is up whose accounting a write settles (keeps the index from growing with
/// dead ids when nobody reads the usage).
const SWEEP_ON_WRITE: u32 = 16;
/// The same, for a usage call.
const SWEEP_ON_USAGE: u32 = 1_000;

/// Definitions every script starts with. `ARGV[1]` is always the prefix.
const PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local prefix = ARGV[1]
local index_key = prefix .. 'x'
local bytes_key = prefix .. 'b'
local weights_key = prefix .. 'w'
local function entry_key(id) return prefix .. 'o:' .. id end
local function issued_key(id) return prefix .. 'i:' .. id end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Takes an entry whose key is gone or going out of the count.
local function unaccount(id)
  if redis.call('ZREM', index_key, id) == 1 then
    -- Entries written before the weights hash existed have their weight in the issued mark.
    local weight = redis.call('HGET', weights_key, id) or redis.call('GET', issued_key(id))
    weight = tonumber(weight or '0') or 0
    redis.call('HDEL', weights_key, id)
    redis.call('DECRBY', bytes_key, weight)
  end
end
-- Settles up to `limit` entries whose time is up: those still there (their TTL was reset
-- outside these scripts) are indexed anew, the others leave the count.
local function sweep(now, limit)
  local due = redis.call('ZRANGEBYSCORE', index_key, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    local ttl = redis.call('PTTL', entry_key(id))
    if ttl > 0 then redis.call('ZADD', index_key, now + ttl, id) else unaccount(id) end
  end
  if redis.call('ZCARD', index_key) == 0 then
    redis.call('DEL', bytes_key, weights_key)
  elseif (tonumber(redis.call('GET', bytes_key) or '0') or 0) < 0 then
    redis.call('SET', bytes_key, 0)
  end
end
-- What an entry created at `created` and last used at `accessed` may still live: `idle` from
-- now, never past its maximum age; 0 when its time is up.
local function remaining(now, created, accessed, idle, max_age)
  if now - accessed > idle then return 0 end
  return math.max(0, math.min(idle, created + max_age - now))
end
local function keep(id, now, ttl)
  redis.call('HSET', entry_key(id), 'a', now)
  redis.call('PEXPIRE', entry_key(id), ttl)
  redis.call('ZADD', index_key, now + ttl, id)
end
"#;

/// `ARGV`: prefix, id, digest, idle ms, max age ms, issued ms, weight, then tenant, original
/// and sweep limit. Without the last three it only refreshes an entry with the same digest (so that an original
/// resent on every turn crosses the network once). Returns 1 when the entry is resident, 0 when
/// the original must be sent, -1 when the retention leaves it no time at all.
const PUT: &str = r#"
local id, digest = ARGV[2], ARGV[3]
local idle, max_age, issued = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local key = entry_key(id)
local old = redis.call('HMGET', key, 'd', 'c', 'a')
if old[1] == digest then
  local ttl = remaining(now, tonumber(old[2]), tonumber(old[3]), idle, max_age)
  if ttl > 0 then
    keep(id, now, ttl)
    return 1
  end
end
if not ARGV[9] then return 0 end
local ttl = math.min(idle, max_age)
if ttl <= 0 then return -1 end
local weight = tonumber(ARGV[7])
-- Replaces an entry of this id with another content, or one expired but still counted.
unaccount(id)
redis.call('DEL', key)
redis.call('HSET', key, 't', ARGV[8], 'o', ARGV[9], 'd', digest, 'c', now, 'a', now)
redis.call('PEXPIRE', key, ttl)
redis.call('SET', issued_key(id), weight, 'PX', math.max(issued, max_age))
redis.call('ZADD', index_key, now + ttl, id)
redis.call('HSET', weights_key, id, weight)
redis.call('INCRBY', bytes_key, weight)
sweep(now, tonumber(ARGV[10]))
return 1
"#;

/// `ARGV`: prefix, id, idle ms, max age ms. Returns `{tenant, original}` (and resets the idle
/// timer), 1 when the id was issued but its original is gone, 0 when it is unknown.
const GET: &str = r#"
local id = ARGV[2]
local idle, max_age = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local key = entry_key(id)
local found = redis.call('HMGET', key, 't', 'o', 'c', 'a')
if found[1] then
  local ttl = remaining(now, tonumber(found[3]), tonumber(found[4]), idle, max_age)
  if ttl > 0 then
    keep(id, now, ttl)
    return {found[1], found[2]}
  end
  redis.call('DEL', key)
  unaccount(id)
  return 1
end
if redis.call('EXISTS', issued_key(id)) == 1 then return 1 end
return 0
"#;

/// `ARGV`: prefix, sweep limit. Returns `{entries, bytes}`.
const USAGE: &str = r#"
sweep(now_ms(), tonumber(ARGV[2]))
return {redis.call('ZCARD', index_key), tonumber(redis.call('GET', bytes_key) or '0') or 0}
"#;

/// A [`Store`] in Redis: replicas that share a Redis server, a prefix and a
/// [`secret`](crate::CcrLayer::secret) answer each other's markers, and every
/// [`CcrHandle`](crate::CcrHandle) sees every original.
///
/// - **Namespaced and tenant-scoped:** every key starts with the prefix; ids are keyed by
///   tenant, and each entry records its tenant, which the layer checks on every read.
/// - **TTL:** a write sets the key's expiry to the idle time, every read and write resets it,
///   never past the entry's maximum age (counted from its first write, on the server's clock).
/// - **Stored once:** writing an original that is already there (same id, same content) only
///   refreshes it; its bytes are sent again only when the entry is gone.
/// - **Fails fast:** every call, connecting included, is bounded by the
///   [`timeout`](RedisStoreBuilder::timeout) (200 ms by default). After a failure calls fail at
///   once for the [`retry_interval`](RedisStoreBuilder::retry_interval) (1 s), then one call
///   tries again; the connection is re-established in the background. A failed write leaves
///   the output uncompressed (no marker without a stored original); a failed read answers
///   the model that the data is unavailable.
/// - **Usage:** entries and bytes come from counters the scripts keep, not from a scan. They
///   count an entry Redis evicted early (under `maxmemory`) until its TTL would have ended.
///
/// Needs Redis 5 or later, or Valkey, standalone (not Cluster); plain `redis://` or
/// `unix://` URLs (no TLS).
///
/// ```no_run
/// # async fn run() -> Result<(), tower_ccr::BoxError> {
/// use std::time::Duration;
/// use tower_ccr::CcrLayer;
/// use tower_ccr::store::RedisStore;
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("myapp:ccr:")
///     .timeout(Duration::from_millis(200))
///     .build()
///     .await?;
/// // Every replica: the same secret and the same Redis.
/// let layer = CcrLayer::new().secret(std::env::var("CCR_SECRET")?).store(store);
/// let handle = layer.handle();
/// # Ok(()) }
/// ```
pub struct RedisStore {
    connection: Connection,
    prefix: Arc<str>,
    timeout: Duration,
    remember_issued: Duration,
    breaker: Breaker,
    put: Script,
    get: Script,
    usage: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("remember_issued", &self.remember_issued)
            .field("retry_interval", &self.breaker.interval)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder for a store at `url` (`redis://[user:password@]host[:port][/db]`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            remember_issued: DEFAULT_REMEMBER_ISSUED,
        }
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs one script call that sends about `bytes` bytes, within the timeout, unless Redis
    /// failed a moment ago.
    async fn call(
        &self,
        invocation: &ScriptInvocation<'_>,
        bytes: usize,
    ) -> Result<Value, BoxError> {
        if !self.breaker.admit() {
            return Err("redis store unavailable: it failed moments ago".into());
        }
        let manager = self.connection.current();
        let mut connection = ConnectionManager::clone(&manager);
        // Saturating: a timeout configured near Duration::MAX must not panic in a request.
        let bound = self.timeout.saturating_add(
            TIMEOUT_PER_BYTE.saturating_mul(u32::try_from(bytes).unwrap_or(u32::MAX)),
        );
        let result = tokio::time::timeout(bound, invocation.invoke_async(&mut connection)).await;
        match result {
            Ok(Ok(value)) => {
                self.breaker.succeeded();
                Ok(value)
            }
            Ok(Err(error)) => {
                if error.is_timeout() {
                    self.connection.renew(&manager);
                }
                if is_unavailable(&error) {
                    self.breaker.failed();
                }
                Err(format!("redis store: {error}").into())
            }
            Err(_) => {
                // No answer on a connection that looks open (a partition, a host gone without
                // a reset): the manager would wait on it forever, so the next call gets a new
                // connection.
                self.connection.renew(&manager);
                self.breaker.failed();
                Err(format!("redis store: no answer within {bound:?}").into())
            }
        }
    }

    async fn put_entry(
        &self,
        id: EntryId,
        entry: Entry,
        retention: Retention,
    ) -> Result<bool, BoxError> {
        let digest = digest(&entry);
        let weight =
            entry.original.len() as u64 + entry.tenant.as_str().len() as u64 + ENTRY_OVERHEAD;
        let mut invocation = self.put.prepare_invoke();
        invocation
            .arg(&*self.prefix)
            .arg(id.as_str())
            .arg(&digest)
            .arg(millis(retention.idle))
            .arg(millis(retention.max_age))
            .arg(millis(self.remember_issued))
            .arg(weight);
        // First without the original: an output resent on every turn is already there.
        match int_reply(self.call(&invocation, 0).await?)? {
            1 => return Ok(true),
            0 => {}
            _ => return Ok(false),
        }
        invocation
            .arg(entry.tenant.as_str())
            .arg(entry.original.as_bytes())
            .arg(SWEEP_ON_WRITE);
        Ok(int_reply(self.call(&invocation, entry.original.len()).await?)? == 1)
    }

    async fn get_entry(&self, id: EntryId, retention: Retention) -> Result<Lookup, BoxError> {
        let mut invocation = self.get.prepare_invoke();
        invocation
            .arg(&*self.prefix)
            .arg(id.as_str())
            .arg(millis(retention.idle))
            .arg(millis(retention.max_age));
        match self.call(&invocation, 0).await? {
            Value::Int(1) => Ok(Lookup::Expired),
            Value::Int(0) => Ok(Lookup::Missing),
            Value::Array(fields) => {
                let mut fields = fields.into_iter();
                let (Some(Value::BulkString(tenant)), Some(Value::BulkString(original)), None) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    return Err(format!("redis store: malformed entry {id}").into());
                };
                let tenant = std::str::from_utf8(&tenant)
                    .ok()
                    .and_then(TenantId::parse)
                    .ok_or_else(|| format!("redis store: malformed tenant in entry {id}"))?;
                let original = String::from_utf8(original)
                    .map_err(|_| format!("redis store: entry {id} is not UTF-8"))?;
                Ok(Lookup::Found(Entry {
                    tenant,
                    original: Arc::from(original),
                }))
            }
            other => Err(format!("redis store: unexpected reply {other:?}").into()),
        }
    }

    async fn usage_now(&self) -> Result<StoreUsage, BoxError> {
        let mut invocation = self.usage.prepare_invoke();
        invocation.arg(&*self.prefix).arg(SWEEP_ON_USAGE);
        match self.call(&invocation, 0).await? {
            Value::Array(counts) => match counts.as_slice() {
                [Value::Int(entries), Value::Int(bytes)] => Ok(StoreUsage {
                    entries: u64::try_from(*entries).unwrap_or(0),
                    bytes: u64::try_from(*bytes).unwrap_or(0),
                }),
                _ => Err(format!("redis store: unexpected usage {counts:?}").into()),
            },
            other => Err(format!("redis store: unexpected usage {other:?}").into()),
        }
    }
}

impl Store for RedisStore {
    fn put(&self, id: EntryId, entry: Entry, retention: Retention) -> StoreFuture<'_, bool> {
        Box::pin(self.put_entry(id, entry, retention))
    }

    fn get(&self, id: EntryId, retention: Retention) -> StoreFuture<'_, Lookup> {
        Box::pin(self.get_entry(id, retention))
    }

    fn usage(&self) -> StoreFuture<'_, StoreUsage> {
        Box::pin(self.usage_now())
    }
}

/// Builder for [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    remember_issued: Duration,
}

impl RedisStoreBuilder {
    /// Prefix of every key (default `ccr:`). Applications sharing a server keep apart by their
    /// prefixes: entries and the usage counters are per prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bound of one store call, connecting included (default 200 ms). A call that takes longer
    /// fails: a write leaves its output uncompressed, a read answers that the data is
    /// unavailable. A write gets 20 ms more per MB of original it sends; a read has no such
    /// allowance (it does not know the size beforehand), so the timeout must cover reading the
    /// largest original back from this server.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failure (no answer, connection lost), calls fail at once for this long
    /// (default 1 s) rather than each waiting for the timeout; then one call tries again.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// How long an id is remembered as issued after its last write (default 7 days, and never
    /// less than the maximum age), so that a retrieval of an expired original says "expired"
    /// rather than "unknown".
    pub fn remember_issued(mut self, duration: Duration) -> Self {
        self.remember_issued = duration;
        self
    }

    /// Connects and checks that the server answers within the timeout. Fails on a malformed
    /// URL or an unreachable server; see [`build_lazy`](Self::build_lazy) to start without one.
    pub async fn build(self) -> Result<RedisStore, BoxError> {
        let store = self.build_lazy()?;
        let mut connection = ConnectionManager::clone(&store.connection.current());
        let ping = ::redis::cmd("PING");
        match tokio::time::timeout(store.timeout, ping.query_async::<()>(&mut connection)).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(error)) => Err(format!("redis store: {error}").into()),
            Err(_) => Err(format!("redis store: no answer within {:?}", store.timeout).into()),
        }
    }

    /// Builds without connecting: the first call connects, and until Redis answers, every
    /// call fails (the layer then sends outputs uncompressed). Fails only on a malformed URL
    /// or outside a Tokio runtime.
    pub fn build_lazy(self) -> Result<RedisStore, BoxError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("redis store: must be built inside a Tokio runtime".into());
        }
        let client = Client::open(self.url.as_str())?;
        // One connection attempt per reconnection: the breaker spaces the attempts out, and a
        // call never waits for the manager's own backoff. Responses are bounded per call (by
        // the timeout and the bytes sent), not per connection.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None);
        let connection = Connection::new(client, config)?;
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Ok(RedisStore {
            connection,
            prefix: Arc::from(self.prefix),
            timeout: self.timeout,
            remember_issued: self.remember_issued,
            breaker: Breaker::new(self.retry_interval),
            put: script(PUT),
            get: script(GET),
            usage: script(USAGE),
        })
    }
}

/// The connection manager in use, replaced when it stops answering.
struct Connection {
    client: Client,
    config: ConnectionManagerConfig,
    current: Mutex<Arc<ConnectionManager>>,
}

impl Connection {
    fn new(client: Client, config: ConnectionManagerConfig) -> Result<Self, RedisError> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            client,
            config,
            current: Mutex::new(Arc::new(manager)),
        })
    }

    fn current(&self) -> Arc<ConnectionManager> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces `failed` by a manager that connects anew, unless another call already did.
    fn renew(&self, failed: &Arc<ConnectionManager>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(fresh) => *current = Arc::new(fresh),
            Err(error) => tracing::warn!(%error, "redis store: cannot make a new connection"),
        }
    }
}

/// Whether an error says Redis cannot be reached (as opposed to a refused command).
fn is_unavailable(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

/// Identifies an entry's content: the same id with another content (a record the layer
/// rewrites) is replaced, the same content only refreshed.
fn digest(entry: &Entry) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(entry.tenant.as_str().as_bytes());
    hasher.update(b"\0");
    hasher.update(entry.original.as_bytes());
    hasher.finalize().to_hex()[..32].to_owned()
}

fn millis(duration: Duration) -> u64 {
    // Lossless: MAX_MS < 2^64.
    duration.as_millis().min(MAX_MS) as u64
}

fn int_reply(value: Value) -> Result<i64, BoxError> {
    match value {
        Value::Int(n) => Ok(n),
        other => Err(format!("redis store: unexpected reply {other:?}").into()),
    }
}

/// Keeps calls from each waiting out the timeout while Redis is down: after a failure, calls
/// fail at once until `interval` has passed; then the first call through probes Redis.
struct Breaker {
    epoch: Instant,
    /// Milliseconds since `epoch` until which calls fail at once; 0 while Redis answers.
    open_until: AtomicU64,
    interval: Duration,
}

impl Breaker {
    fn new(interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            open_until: AtomicU64::new(0),
            interval,
        }
    }

    fn now_ms(&self) -> u64 {
        // Offset by one: 0 means closed.
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn admit(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        // Past the interval, one caller wins the probe; the others keep failing fast.
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + millis(self.interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn failed(&self) {
        let until = self.now_ms() + millis(self.interval);
        self.open_until.store(until, Ordering::Relaxed);
    }

    fn succeeded(&self) {
        self.open_until.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_fails_fast_after_a_failure_and_lets_one_probe_through_later() {
        let breaker = Breaker::new(Duration::ZERO);
        assert!(breaker.admit());
        breaker.failed();
        // A zero interval: the next call probes at once.
        assert!(breaker.admit());
        breaker.succeeded();
        assert!(breaker.admit() && breaker.admit());

        let breaker = Breaker::new(Duration::from_secs(3600));
        breaker.failed();
        assert!(!breaker.admit());
        assert!(!breaker.admit());
        breaker.succeeded();
        assert!(breaker.admit());
    }

    #[test]
    fn the_digest_tells_contents_and_tenants_apart() {
        let key = crate::id::IdKey::from_secret(b"k");
        let entry = |tenant: &[u8], text: &str| Entry {
            tenant: key.tenant(tenant),
            original: Arc::from(text),
        };
        let a = digest(&entry(b"a", "x"));
        assert_eq!(a.len(), 32);
        assert_eq!(a, digest(&entry(b"a", "x")));
        assert_ne!(a, digest(&entry(b"a", "y")));
        assert_ne!(a, digest(&entry(b"b", "x")));
    }
}
