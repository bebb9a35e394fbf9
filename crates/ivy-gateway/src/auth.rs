//! Users, roles and password checks shared by the MQTT broker and the HTTP API (SPEC 4.3).
//!
//! Passwords are stored only as argon2id PHC hashes in `users.toml` in the data directory (mode 0600). The
//! original's `MQTT_USERS=u:p[:role],...` still works (kept as salted SHA-256 digests in memory, with a warning).
//! With no user at all, the first start creates `admin` with a random password, commits it to disk only once
//! start-up has succeeded, and returns it once for printing; `ivy-gateway passwd --reset admin` recovers access.
//!
//! Failed logins are throttled per (user, source) and per source ([`LoginGuard`]), for MQTT and HTTP alike.
//!
//! Verification costs ~20 ms of CPU: it runs on the blocking pool, at most two at a time, and successful
//! credentials are cached (keyed by a SHA-256 of user and password) so reconnecting clients do not pay again.
//! Unknown users are verified against a dummy hash so timing does not reveal which names exist.

use crate::lock::lock;
use crate::login_guard::{GuardConfig, LoginGuard};
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything a client may do (it still cannot publish the gateway's own topics).
    Admin,
    /// Read everything under the prefix and send commands.
    Operator,
    /// Read everything under the prefix.
    Viewer,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// Whether the role may send commands to meters.
    pub fn can_command(&self) -> bool {
        matches!(self, Role::Admin | Role::Operator)
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(AuthError::BadRole(other.to_owned())),
        }
    }
}

/// Problems with users or their file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file cannot be read or written.
    #[error("users file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The users file is not valid.
    #[error("users file {0}: {1}")]
    Format(PathBuf, String),
    /// A role name that does not exist.
    #[error("unknown role '{0}' (admin, operator or viewer)")]
    BadRole(String),
    /// A malformed `MQTT_USERS` entry.
    #[error("MQTT_USERS entry '{0}' must be user:password or user:password:role")]
    BadUserSpec(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// One user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// argon2id PHC string (empty for `MQTT_USERS` users, which are checked by [`EnvSecret`]).
    pub hash: String,
    /// Role.
    pub role: Role,
    /// The password check of a `MQTT_USERS` user (never written to the users file).
    #[serde(skip)]
    pub env_secret: Option<EnvSecret>,
}

/// How a `MQTT_USERS` password is checked: SHA-256 of a random salt and the password, compared in constant time.
///
/// These passwords are in plain text in the process environment already, so a slow hash in memory protects
/// nothing; argon2id for each of them cost ~20 ms of CPU and 19 MiB of transient memory at every start.
#[derive(Clone)]
pub struct EnvSecret {
    salt: [u8; 16],
    digest: [u8; 32],
}

impl std::fmt::Debug for EnvSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvSecret(..)")
    }
}

impl EnvSecret {
    /// The check for `password`, with a fresh random salt.
    pub fn new(password: &[u8]) -> Self {
        use rand::RngCore;
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        EnvSecret { salt, digest: Self::digest(&salt, password) }
    }

    fn digest(salt: &[u8; 16], password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(salt);
        h.update(password);
        h.finalize().into()
    }

    /// Whether `password` is this user's password (constant time in the digest comparison).
    pub fn matches(&self, password: &[u8]) -> bool {
        let candidate = Self::digest(&self.salt, password);
        candidate.iter().zip(self.digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl User {
    fn same_credentials(&self, other: &User) -> bool {
        let secret = |u: &User| u.env_secret.as_ref().map(|s| (s.salt, s.digest));
        self.hash == other.hash && self.role == other.role && secret(self) == secret(other)
    }
}

/// User names that a reload of the users added, removed or changed (password or role).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersChange {
    /// New users.
    pub added: Vec<String>,
    /// Users that are gone.
    pub removed: Vec<String>,
    /// Users whose password or role changed.
    pub changed: Vec<String>,
}

impl UsersChange {
    /// True when nobody changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    #[serde(default, rename = "user")]
    users: Vec<User>,
}

/// The users file name inside the data directory.
pub const USERS_FILE: &str = "users.toml";

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Verifies `password` against a PHC hash (CPU-heavy: call off the async threads).
pub fn verify_hash(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A random password of 24 letters and digits.
pub fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..24).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// The users, loaded once at start-up.
#[derive(Debug)]
pub struct Users {
    users: HashMap<String, User>,
}

impl Users {
    /// Loads `users.toml` from `data_dir`, adds the `MQTT_USERS` users, and when there is nobody at all prepares
    /// `admin` with a random password: usable in memory at once, written to disk by [`FirstRun::commit`] (only its
    /// hash), and printed once by the caller after that.
    pub fn load_or_init(data_dir: &Path, mqtt_users: Option<&str>) -> Result<(Users, Option<FirstRun>), AuthError> {
        let mut store = Users::load(data_dir, mqtt_users, None)?;
        let mut first_run = None;
        if store.users.is_empty() {
            // Nothing is written yet: the admin is committed only once the gateway has started (see
            // [`FirstRun::commit`]), so a start that fails leaves no account whose password nobody saw.
            let password = random_password();
            let admin =
                User { name: "admin".into(), hash: hash_password(&password)?, role: Role::Admin, env_secret: None };
            store.users.insert(admin.name.clone(), admin.clone());
            first_run = Some(FirstRun { path: data_dir.join(USERS_FILE), admin, password });
        }
        Ok((store, first_run))
    }

    /// Loads `users.toml` from `data_dir` and adds the `MQTT_USERS` users (never creates anyone). A `MQTT_USERS`
    /// user whose password `previous` already checks keeps its check, so a reload can tell who really changed.
    pub fn load(data_dir: &Path, mqtt_users: Option<&str>, previous: Option<&Users>) -> Result<Self, AuthError> {
        let path = data_dir.join(USERS_FILE);
        let mut users = HashMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| AuthError::Io(path.clone(), e))?;
            let file: UsersFile = toml::from_str(&text).map_err(|e| AuthError::Format(path.clone(), e.to_string()))?;
            for u in file.users {
                if PasswordHash::new(&u.hash).is_err() {
                    return Err(AuthError::Format(path.clone(), format!("user '{}' has no valid PHC hash", u.name)));
                }
                users.insert(u.name.clone(), u);
            }
        }
        if let Some(spec) = mqtt_users.filter(|s| !s.trim().is_empty()) {
            if previous.is_none() {
                tracing::warn!(
                    "MQTT_USERS holds plain passwords; prefer the users file ({USERS_FILE}, `ivy-gateway passwd`)"
                );
            }
            for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let mut parts = entry.splitn(3, ':');
                let (Some(name), Some(password)) = (parts.next(), parts.next()) else {
                    return Err(AuthError::BadUserSpec(entry.to_owned()));
                };
                if name.is_empty() || password.is_empty() {
                    return Err(AuthError::BadUserSpec(entry.to_owned()));
                }
                let role = match parts.next() {
                    Some(r) => r.parse()?,
                    None => Role::Operator,
                };
                let kept = previous
                    .and_then(|p| p.get(name))
                    .and_then(|u| u.env_secret.clone())
                    .filter(|secret| secret.matches(password.as_bytes()));
                let env_secret = Some(kept.unwrap_or_else(|| EnvSecret::new(password.as_bytes())));
                users.insert(name.to_owned(), User { name: name.to_owned(), hash: String::new(), role, env_secret });
            }
        }
        Ok(Users { users })
    }

    /// Who differs between `self` (before) and `new`: added, removed, and changed (password or role) user names,
    /// each sorted.
    pub fn diff(&self, new: &Users) -> UsersChange {
        let mut change = UsersChange::default();
        for (name, u) in &new.users {
            match self.users.get(name) {
                None => change.added.push(name.clone()),
                Some(old) if !old.same_credentials(u) => change.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        change.removed = self.users.keys().filter(|n| !new.users.contains_key(*n)).cloned().collect();
        change.added.sort();
        change.removed.sort();
        change.changed.sort();
        change
    }

    /// Users given directly (tests, HTTP fixtures).
    pub fn from_users(users: Vec<User>) -> Self {
        Users { users: users.into_iter().map(|u| (u.name.clone(), u)).collect() }
    }

    /// The user named `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The admin account of a first start, not yet on disk.
#[derive(Debug)]
pub struct FirstRun {
    path: PathBuf,
    admin: User,
    password: String,
}

impl FirstRun {
    /// Writes the admin (hash only) to the users file, durably and atomically, and returns the password to print
    /// once. Call it when start-up has succeeded: until then the data directory holds no account.
    pub fn commit(self) -> Result<String, AuthError> {
        write_users_file(&self.path, std::slice::from_ref(&self.admin))?;
        Ok(self.password)
    }
}

fn write_users_file(path: &Path, users: &[User]) -> Result<(), AuthError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AuthError::Io(dir.to_path_buf(), e))?;
    }
    let text = toml::to_string_pretty(&UsersFile { users: users.to_vec() })
        .map_err(|e| AuthError::Format(path.to_path_buf(), e.to_string()))?;
    let text = format!("# IVY gateway users: argon2id hashes only (`ivy-gateway passwd` prints one).\n{text}");
    crate::durable::write_atomic(path, text.as_bytes(), Some(0o600)).map_err(|e| AuthError::Io(path.to_path_buf(), e))
}

/// Recovery when nobody can log in (`ivy-gateway passwd --reset <user>`): gives `user` a new random password in
/// the users file of `data_dir` (written durably and atomically; other users are kept as they are) and returns it.
/// A user missing from the file is added with role admin. The running gateway reads the file at start: restart it.
///
/// Errors: the file cannot be read, parsed or written.
pub fn reset_password(data_dir: &Path, user: &str) -> Result<(String, Role), AuthError> {
    let path = data_dir.join(USERS_FILE);
    let mut file = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str::<UsersFile>(&text).map_err(|e| AuthError::Format(path.clone(), e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsersFile::default(),
        Err(e) => return Err(AuthError::Io(path, e)),
    };
    if user.trim().is_empty() {
        return Err(AuthError::BadUserSpec(user.to_owned()));
    }
    let password = random_password();
    let hash = hash_password(&password)?;
    let role = match file.users.iter_mut().find(|u| u.name == user) {
        Some(u) => {
            u.hash = hash;
            u.role
        }
        None => {
            file.users.push(User { name: user.to_owned(), hash, role: Role::Admin, env_secret: None });
            Role::Admin
        }
    };
    write_users_file(&path, &file.users)?;
    Ok((password, role))
}

/// argon2id (default parameters) of a throw-away password. Verified against for unknown users and failed
/// `MQTT_USERS` checks, so timing does not reveal which names exist; a constant because hashing one at start-up cost
/// 19 MiB and ~20 ms for nothing.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$VvgwBzBKv8QY+rnkMtb4Mw$UtVU3d8jammmrqVo+GLlfjhpGqndD3aFTnC5tZR2gyc";

/// Largest number of cached successful credentials.
const CACHE_MAX: usize = 10_000;

/// Where a login attempt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// MQTT CONNECT.
    Mqtt,
    /// HTTP login or Basic credentials.
    Http,
}

/// Why [`Authenticator::login`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefused {
    /// Unknown user or wrong password.
    BadCredentials,
    /// Too many recent failures of this user from this source (or from this source at all): retry after the
    /// wait. The password was not checked.
    Throttled(std::time::Duration),
}

/// Failed and throttled logins, per plane.
#[derive(Debug, Default)]
pub struct LoginCounters {
    /// Wrong credentials over MQTT.
    pub mqtt_failures: AtomicU64,
    /// Wrong credentials over HTTP.
    pub http_failures: AtomicU64,
    /// MQTT attempts refused unchecked by the throttle.
    pub mqtt_throttled: AtomicU64,
    /// HTTP attempts refused unchecked by the throttle.
    pub http_throttled: AtomicU64,
}

/// Checks credentials for the broker and the HTTP API.
#[derive(Debug)]
pub struct Authenticator {
    store: std::sync::RwLock<Arc<Users>>,
    enabled: bool,
    cache: Mutex<HashMap<[u8; 32], Role>>,
    permits: Arc<Semaphore>,
    /// Bumped by every [`Authenticator::replace_users`]: a check that started before must not cache its result.
    generation: std::sync::atomic::AtomicU64,
    guard: LoginGuard,
    counters: LoginCounters,
}

impl Authenticator {
    /// An authenticator over `users`; with `enabled` false every client is accepted with role admin. Failed logins
    /// are throttled with the default [`GuardConfig`].
    pub fn new(users: Users, enabled: bool) -> Self {
        Self::with_guard(users, enabled, GuardConfig::default())
    }

    /// Like [`Authenticator::new`] with a throttle of `guard`.
    pub fn with_guard(users: Users, enabled: bool, guard: GuardConfig) -> Self {
        Authenticator {
            store: std::sync::RwLock::new(Arc::new(users)),
            enabled,
            cache: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(2)),
            generation: std::sync::atomic::AtomicU64::new(0),
            guard: LoginGuard::new(guard),
            counters: LoginCounters::default(),
        }
    }

    /// The users in effect now.
    pub fn users(&self) -> Arc<Users> {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `store` in effect for every later check (MQTT CONNECT, HTTP login and Basic) and forgets cached
    /// credentials, so an old password stops working at once. Returns who changed.
    pub fn replace_users(&self, store: Users) -> UsersChange {
        let mut current = self.store.write().unwrap_or_else(|p| p.into_inner());
        let change = current.diff(&store);
        *current = Arc::new(store);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        drop(current);
        lock(&self.cache).clear();
        change
    }

    /// Failed and throttled logins so far.
    pub fn counters(&self) -> &LoginCounters {
        &self.counters
    }

    /// A login attempt of `user` from `source` over `plane`: throttled per (user, source) and per source after
    /// failures ([`LoginGuard`]), then [`Authenticator::verify`]. Every failure and throttled attempt is counted.
    pub async fn login(
        &self,
        user: &str,
        password: &[u8],
        plane: Plane,
        source: Option<IpAddr>,
    ) -> Result<Role, LoginRefused> {
        if !self.enabled {
            return Ok(Role::Admin);
        }
        // A connection without a peer address (not the case for TCP) shares one source bucket.
        let source = source.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let (failures, throttled) = match plane {
            Plane::Mqtt => (&self.counters.mqtt_failures, &self.counters.mqtt_throttled),
            Plane::Http => (&self.counters.http_failures, &self.counters.http_throttled),
        };
        if let Err(wait) = self.guard.check(user, source, std::time::Instant::now()) {
            throttled.fetch_add(1, AtomicOrdering::Relaxed);
            return Err(LoginRefused::Throttled(wait));
        }
        match self.verify(user, password).await {
            Some(role) => {
                self.guard.succeeded(user, source);
                Ok(role)
            }
            None => {
                failures.fetch_add(1, AtomicOrdering::Relaxed);
                self.guard.failed(user, source, std::time::Instant::now());
                Err(LoginRefused::BadCredentials)
            }
        }
    }

    /// Whether credentials are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The role of a logged-in user (admin for everyone when auth is off).
    pub fn role_of(&self, user: Option<&str>) -> Option<Role> {
        if !self.enabled {
            return Some(Role::Admin);
        }
        user.and_then(|u| self.users().get(u).map(|u| u.role))
    }

    fn cache_key(user: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0u8]);
        h.update(password);
        h.finalize().into()
    }

    /// Verifies credentials; the role on success.
    pub async fn verify(&self, user: &str, password: &[u8]) -> Option<Role> {
        if !self.enabled {
            return Some(Role::Admin);
        }
        let key = Self::cache_key(user, password);
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        if let Some(role) = lock(&self.cache).get(&key).copied() {
            return Some(role);
        }
        let store = self.users();
        let (hash, role) = match store.get(user) {
            Some(u) => match &u.env_secret {
                Some(secret) if secret.matches(password) => {
                    self.remember(key, u.role, generation);
                    return Some(u.role);
                }
                // A wrong password takes as long as for any other user.
                Some(_) => (DUMMY_HASH.to_owned(), None),
                None => (u.hash.clone(), Some(u.role)),
            },
            None => (DUMMY_HASH.to_owned(), None),
        };
        let password = String::from_utf8_lossy(password).into_owned();
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify_hash(&hash, &password)
        })
        .await
        .unwrap_or(false);
        let role = role.filter(|_| ok)?;
        self.remember(key, role, generation);
        Some(role)
    }

    fn remember(&self, key: [u8; 32], role: Role, generation: u64) {
        let mut cache = lock(&self.cache);
        // Checked under the cache lock: a replacement of the users in between has cleared the cache already.
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            return;
        }
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, role);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_run_creates_admin_and_stores_only_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (store, first) = Users::load_or_init(dir.path(), None).unwrap();
        assert!(!dir.path().join(USERS_FILE).exists(), "nothing on disk before start-up succeeded");
        let password = first.expect("a first-run admin").commit().unwrap();
        let text = std::fs::read_to_string(dir.path().join(USERS_FILE)).unwrap();
        assert!(!text.contains(&password));
        assert!(text.contains("$argon2id$"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(USERS_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let auth = Authenticator::new(store, true);
        assert_eq!(auth.verify("admin", password.as_bytes()).await, Some(Role::Admin));
        assert_eq!(auth.verify("admin", b"wrong").await, None);
        assert_eq!(auth.verify("nobody", b"x").await, None);
        // Second start: the stored admin is loaded, no new password.
        let (_, again) = Users::load_or_init(dir.path(), None).unwrap();
        assert!(again.is_none());
    }

    #[test]
    fn the_dummy_hash_is_a_valid_default_argon2id_hash() {
        assert!(verify_hash(DUMMY_HASH, "ivy-gateway-dummy-password"));
        let fresh = hash_password("x").unwrap();
        let params = |h: &str| h.split('$').nth(3).map(str::to_owned);
        assert_eq!(params(DUMMY_HASH), params(&fresh), "same cost as real hashes, so timing is uniform");
    }

    #[tokio::test]
    async fn mqtt_users_compatibility() {
        let dir = tempfile::tempdir().unwrap();
        let (store, first) = Users::load_or_init(dir.path(), Some("alice:s3cret, bob:pw:viewer")).unwrap();
        assert!(first.is_none());
        assert!(!dir.path().join(USERS_FILE).exists(), "plain users are not written to disk");
        let auth = Authenticator::new(store, true);
        assert_eq!(auth.verify("alice", b"s3cret").await, Some(Role::Operator));
        assert_eq!(auth.verify("bob", b"pw").await, Some(Role::Viewer));
        assert_eq!(auth.verify("bob", b"pw2").await, None);
        assert_eq!(auth.verify("alice", b"").await, None);
        assert!(Users::load_or_init(dir.path(), Some("broken")).is_err());
        assert!(Users::load_or_init(dir.path(), Some("u:p:king")).is_err());
    }

    #[tokio::test]
    async fn replacing_users_reports_who_changed_and_forgets_cached_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let write = |users: &[(&str, &str, Role)]| {
            let users: Vec<User> = users
                .iter()
                .map(|(n, p, r)| User {
                    name: (*n).into(),
                    hash: hash_password(p).unwrap(),
                    role: *r,
                    env_secret: None,
                })
                .collect();
            write_users_file(&dir.path().join(USERS_FILE), &users).unwrap();
        };
        write(&[("ann", "pw-ann", Role::Operator), ("bob", "pw-bob", Role::Viewer)]);
        let spec = Some("env:pw-env:viewer");
        let auth = Authenticator::new(Users::load(dir.path(), spec, None).unwrap(), true);
        assert_eq!(auth.verify("ann", b"pw-ann").await, Some(Role::Operator), "now cached");

        // ann gets a new password, bob goes, cid comes; the MQTT_USERS user is unchanged.
        write(&[("ann", "pw-ann-2", Role::Operator), ("cid", "pw-cid", Role::Admin)]);
        let current = auth.users();
        let change = auth.replace_users(Users::load(dir.path(), spec, Some(&current)).unwrap());
        assert_eq!(change.added, ["cid"]);
        assert_eq!(change.removed, ["bob"]);
        assert_eq!(change.changed, ["ann"]);
        assert_eq!(auth.verify("ann", b"pw-ann").await, None, "the cached old password stops working");
        assert_eq!(auth.verify("ann", b"pw-ann-2").await, Some(Role::Operator));
        assert_eq!(auth.verify("bob", b"pw-bob").await, None);
        assert_eq!(auth.verify("env", b"pw-env").await, Some(Role::Viewer));

        let current = auth.users();
        let change = auth.replace_users(Users::load(dir.path(), Some("env:pw-env-2:viewer"), Some(&current)).unwrap());
        assert_eq!(change.changed, ["env"], "a new MQTT_USERS password is a change");
    }
}
