//! One-time URL tokens: 32 random bytes, base64url, valid once and for a
//! limited time. A token that is unknown, used or expired finds nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{StreamError, StreamRequest};

/// Outstanding tokens beyond which new ones are refused: each holds a
/// request until it is used or expires, and the RPCs are not rate limited.
pub const MAX_PENDING_TOKENS: usize = 4096;

/// Tokens waiting to be used.
#[derive(Debug)]
pub struct TokenStore {
    /// Milliseconds; a reload may change it (for tokens issued after).
    ttl_ms: AtomicU64,
    pending: Mutex<HashMap<String, (Instant, StreamRequest)>>,
}

impl TokenStore {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl_ms: AtomicU64::new(millis(ttl)),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh token for `request`.
    pub fn issue(&self, request: StreamRequest) -> Result<String, StreamError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| StreamError::Failed(format!("no randomness for a token: {e}")))?;
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, (expiry, _)| *expiry > now);
        if pending.len() >= MAX_PENDING_TOKENS {
            return Err(StreamError::Failed(format!(
                "{MAX_PENDING_TOKENS} streaming URLs are outstanding; use or let some expire first"
            )));
        }
        let ttl = Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed));
        // A TTL beyond what an Instant holds is as good as forever.
        let expiry = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(u64::from(u32::MAX)));
        pending.insert(token.clone(), (expiry, request));
        Ok(token)
    }

    /// How long tokens issued from now on stay valid; those issued before
    /// keep their expiry.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(millis(ttl), Ordering::Relaxed);
    }

    /// Takes the request behind `token` if it is known and not expired; a
    /// token is consumed by its first use whatever the outcome.
    pub fn take(&self, token: &str) -> Option<StreamRequest> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (expiry, request) = pending.remove(token)?;
        (expiry > Instant::now()).then_some(request)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> StreamRequest {
        StreamRequest::PortForward {
            pod_id: "p".into(),
            ports: vec![80],
        }
    }

    #[test]
    fn a_token_works_once() {
        let store = TokenStore::new(Duration::from_secs(60));
        let token = store.issue(request()).expect("issue");
        assert_eq!(token.len(), 43, "32 bytes base64url without padding");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(store.take(&token), Some(request()));
        assert_eq!(store.take(&token), None, "a token is single use");
        assert_eq!(store.take("nonsense"), None);
    }

    #[test]
    fn tokens_differ_and_expire() {
        let store = TokenStore::new(Duration::from_millis(20));
        let a = store.issue(request()).expect("issue");
        let b = store.issue(request()).expect("issue");
        assert_ne!(a, b);
        #[allow(clippy::disallowed_methods)] // a plain #[test], no executor to block
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(store.take(&a), None, "expired");
    }

    #[test]
    fn a_new_ttl_applies_to_tokens_issued_after_it() {
        let store = TokenStore::new(Duration::from_secs(60));
        let long = store.issue(request()).expect("issue");
        store.set_ttl(Duration::from_millis(20));
        let short = store.issue(request()).expect("issue");
        #[allow(clippy::disallowed_methods)] // a plain #[test], no executor to block
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(store.take(&short), None, "expired under the new TTL");
        assert_eq!(
            store.take(&long),
            Some(request()),
            "issued under the old TTL"
        );
    }
}
