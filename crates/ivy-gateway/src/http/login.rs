//! Who is calling: login cookies from `POST /api/login`, or HTTP Basic with the same users (for scripts).
//!
//! Logins live in memory (a restart logs everyone out) with an idle expiry and a bound on their number; the
//! cookie is HttpOnly and SameSite=Strict (and Secure when the gateway serves HTTPS), and the token is 32 random
//! bytes.

use crate::auth::Role;
use crate::lock::lock;
use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "ivy_session";

/// A logged-in caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// User name.
    pub user: String,
    /// Role.
    pub role: Role,
}

#[derive(Debug, Clone)]
struct Session {
    caller: Caller,
    last_used: Instant,
}

/// The session table.
#[derive(Debug)]
pub(crate) struct Logins {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
    max: usize,
    secure: bool,
}

impl Logins {
    /// Logins that expire after `idle` without use; at most `max` at once (the oldest is evicted).
    pub(crate) fn new(idle: Duration, max: usize) -> Self {
        Logins { map: Mutex::new(HashMap::new()), idle, max: max.max(1), secure: false }
    }

    /// Marks the cookie `Secure` (the gateway serves HTTPS: browsers then never send it over plain HTTP).
    pub(crate) fn with_secure_cookie(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        lock(&self.map)
    }

    /// Starts a session; returns its token.
    pub(crate) fn create(&self, caller: Caller) -> String {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| now.duration_since(s.last_used) < self.idle);
        if map.len() >= self.max
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(token.clone(), Session { caller, last_used: now });
        token
    }

    /// The caller of a live session (and refreshes its expiry).
    pub(crate) fn get(&self, token: &str) -> Option<Caller> {
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get_mut(token)?;
        if now.duration_since(session.last_used) >= self.idle {
            map.remove(token);
            return None;
        }
        session.last_used = now;
        Some(session.caller.clone())
    }

    /// Ends a session.
    pub(crate) fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Ends every login whose caller `ended` selects (users removed, or whose password or role changed);
    /// returns how many ended.
    pub(crate) fn end_where(&self, mut ended: impl FnMut(&Caller) -> bool) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, s| !ended(&s.caller));
        before - map.len()
    }

    /// Logins open now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The cookie value that sets `token`.
    pub(crate) fn set_cookie(&self, token: &str) -> String {
        format!(
            "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}; Max-Age={}",
            self.secure_attr(),
            self.idle.as_secs()
        )
    }

    /// The cookie value that clears the session cookie.
    pub(crate) fn clear_cookie(&self) -> String {
        format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict{}; Max-Age=0", self.secure_attr())
    }

    fn secure_attr(&self) -> &'static str {
        if self.secure { "; Secure" } else { "" }
    }
}

/// Session tokens in the request's `Cookie` headers.
pub(crate) fn tokens(headers: &axum::http::HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).filter_map(token_from_cookies)
}

/// The session token in a `Cookie` header, if any.
pub(crate) fn token_from_cookies(header: &str) -> Option<&str> {
    header.split(';').map(str::trim).find_map(|kv| kv.strip_prefix(COOKIE)?.strip_prefix('=')).filter(|t| !t.is_empty())
}

/// User and password of an `Authorization: Basic ...` header.
pub(crate) fn basic_credentials(header: &str) -> Option<(String, Vec<u8>)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let (user, password) = decoded.split_at(colon);
    let user = String::from_utf8(user.to_vec()).ok()?;
    Some((user, password.get(1..).unwrap_or_default().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Caller {
        Caller { user: name.into(), role: Role::Viewer }
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Logins::new(Duration::from_secs(60), 2);
        let a = s.create(caller("a"));
        let b = s.create(caller("b"));
        assert_eq!(s.get(&a).unwrap().user, "a");
        let c = s.create(caller("c"));
        assert_eq!(s.len(), 2);
        assert!(s.get(&b).is_none(), "the least recently used session was evicted");
        assert!(s.get(&a).is_some() && s.get(&c).is_some());
        s.remove(&a);
        assert!(s.get(&a).is_none());
        let short = Logins::new(Duration::from_millis(0), 10);
        let t = short.create(caller("x"));
        assert!(short.get(&t).is_none());
    }

    #[test]
    fn parses_cookies_and_basic() {
        assert_eq!(token_from_cookies("a=1; ivy_session=abc; b=2"), Some("abc"));
        assert_eq!(token_from_cookies("ivy_session_other=abc"), None);
        assert_eq!(token_from_cookies("ivy_session="), None);
        let (u, p) = basic_credentials("Basic dXNlcjpwYTpzcw==").unwrap();
        assert_eq!((u.as_str(), p.as_slice()), ("user", b"pa:ss".as_slice()));
        assert!(basic_credentials("Bearer x").is_none());
        assert!(basic_credentials("Basic !!!").is_none());
    }
}
