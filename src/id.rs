//! Ids for stored originals and tenants: keyed BLAKE3, so an id is neither guessable nor a
//! confirmation oracle for someone without the secret.

use std::fmt;

/// Length of an id in lowercase hex characters (96 bits).
pub const ID_HEX_LEN: usize = 24;

/// The key every id is derived with. Two layers that share a secret issue the same ids for the
/// same (tenant, output), which is what replicas behind a shared store need.
#[derive(Clone)]
pub(crate) struct IdKey([u8; 32]);

impl IdKey {
    /// Derives the key from a user-supplied secret.
    pub(crate) fn from_secret(secret: &[u8]) -> Self {
        Self(blake3::derive_key("tower-ccr v1 id key", secret))
    }

    /// A key from the operating system's random source: ids then differ from process to process.
    pub(crate) fn random() -> Self {
        let mut seed = [0u8; 32];
        if let Err(error) = getrandom::fill(&mut seed) {
            // Without OS randomness, fall back to a per-process value that is still unpredictable
            // enough for an in-memory store; log it because a shared store would need a secret.
            tracing::warn!(%error, "no OS randomness for the ccr id key; set CcrLayer::secret");
            let fallback = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            seed = *blake3::hash(fallback.as_bytes()).as_bytes();
        }
        Self::from_secret(&seed)
    }

    /// The tenant id of a credential (or any other tenant-identifying string).
    pub(crate) fn tenant(&self, credential: &[u8]) -> TenantId {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(b"tenant\0");
        hasher.update(credential);
        TenantId(hex(&hasher.finalize().as_bytes()[..16]))
    }

    /// The id of an original for a tenant.
    pub(crate) fn entry(&self, tenant: &TenantId, original: &str) -> EntryId {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(b"entry\0");
        hasher.update(tenant.0.as_bytes());
        hasher.update(b"\0");
        hasher.update(original.as_bytes());
        EntryId(hex(&hasher.finalize().as_bytes()[..ID_HEX_LEN / 2]))
    }
}

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdKey(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// Who an original belongs to: a keyed hash of the request's credential (or of what the
/// configured tenant function returned). Originals of one tenant never resolve for another.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant id as 32 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads back a tenant id that [`as_str`](Self::as_str) wrote, as a [`Store`] that keeps
    /// entries outside the process must. Anything but 32 lowercase hex characters is `None`.
    ///
    /// [`Store`]: crate::Store
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(text.to_owned()))
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a stored original: 24 lowercase hex characters, as printed in markers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(String);

impl EntryId {
    /// Parses an id as the model or an application may write it: surrounding whitespace and a
    /// `hash=` prefix are tolerated, hex digits may be uppercase. Anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix("hash=").unwrap_or(text);
        if text.len() == ID_HEX_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(Self(text.to_ascii_lowercase()))
        } else {
            None
        }
    }

    /// The id as 24 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_secret_tenant_and_content() {
        let key = IdKey::from_secret(b"s1");
        let alice = key.tenant(b"Bearer alice");
        let bob = key.tenant(b"Bearer bob");
        assert_ne!(alice, bob);
        let id = key.entry(&alice, "output");
        assert_eq!(id.as_str().len(), ID_HEX_LEN);
        assert_eq!(id, key.entry(&alice, "output"));
        assert_ne!(id, key.entry(&bob, "output"));
        assert_ne!(id, key.entry(&alice, "output2"));
        assert_ne!(id, IdKey::from_secret(b"s2").entry(&alice, "output"));
        assert_ne!(
            IdKey::random().entry(&alice, "x"),
            IdKey::random().entry(&alice, "x")
        );
    }

    #[test]
    fn a_tenant_id_reads_back_from_its_text() {
        let tenant = IdKey::from_secret(b"s").tenant(b"Bearer alice");
        assert_eq!(TenantId::parse(tenant.as_str()), Some(tenant.clone()));
        assert!(TenantId::parse(&tenant.as_str().to_ascii_uppercase()).is_none());
        assert!(TenantId::parse(&tenant.as_str()[1..]).is_none());
        assert!(TenantId::parse("").is_none());
    }

    #[test]
    fn parse_accepts_only_24_hex() {
        let id = EntryId::parse(" hash=ABCDEF0123456789abcdef01 ").unwrap();
        assert_eq!(id.as_str(), "abcdef0123456789abcdef01");
        assert!(EntryId::parse("abcdef0123456789abcdef0").is_none());
        assert!(EntryId::parse("abcdef0123456789abcdef012").is_none());
        assert!(EntryId::parse("zzcdef0123456789abcdef01").is_none());
        assert!(EntryId::parse("").is_none());
    }
}
