//! Who may use the relay: registered identities, login challenges and session tokens.
//!
//! The first login of a user name registers it to the identity that proved it holds
//! the signing key; afterwards only that identity can log in under it. Registration
//! follows the operator's [`RegistrationPolicy`]; names are unique whatever their
//! letter case, and no two users share a public key.
//!
//! Challenges are stateless: the relay MACs the user name, an expiry and a random nonce
//! with a secret of its own, so handing them out costs it no memory and nobody can crowd
//! out someone else's login. A challenge is remembered only once used, until it expires,
//! so that it cannot be used twice.
//!
//! Tokens are 32 random bytes; only their SHA-256 is kept, so the table holds nothing an
//! attacker could replay, and lookups do not compare secrets.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tonic::Status;
use zeroize::Zeroizing;

use super::registration::{RegistrationLimiter, RegistrationMode};
use super::{Limits, ServerError};
use crate::crypto::{Fingerprint, VerifiedIdentity};
use crate::proto::PublicIdentity;
use crate::protocol::CHALLENGE_LEN;
use crate::store::{Store, StoreError};

/// How long a challenge may be answered.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Live tokens per user; a new login revokes the oldest beyond this.
const MAX_TOKENS_PER_USER: usize = 16;

/// A challenge is `u64be(expiry in ms since the Unix epoch) || nonce || tag`.
const EXPIRY_LEN: usize = 8;
const NONCE_LEN: usize = 8;
const ISSUED_LEN: usize = EXPIRY_LEN + NONCE_LEN;

type Challenge = [u8; CHALLENGE_LEN];
type Digest32 = [u8; 32];

/// The relay's accounts.
pub(crate) struct Accounts {
    state: Mutex<State>,
    /// Where registrations are kept across restarts.
    store: Arc<dyn Store>,
    /// Authenticates the challenges this relay issued; never leaves memory.
    challenge_key: Zeroizing<[u8; 32]>,
    max_identities: usize,
    token_ttl: Duration,
    registration: RegistrationMode,
    /// Other relays register users in the same store (`--nats`): a name unknown here
    /// is looked for there.
    shared_store: AtomicBool,
}

struct State {
    identities: HashMap<String, Registered>,
    /// A registered name in lower case → the name as registered.
    folded_names: HashMap<String, String>,
    /// SHA-256 of a registered public key (of either kind) → the user it belongs to.
    keys: HashMap<Digest32, String>,
    /// Names (in lower case) and keys of registrations being stored: taken meanwhile.
    pending_names: HashSet<String>,
    pending_keys: HashSet<Digest32>,
    registrations: RegistrationLimiter,
    /// Challenges already used → their expiry (ms since the Unix epoch).
    used_challenges: HashMap<Challenge, u64>,
    /// SHA-256 of a token → what it grants.
    tokens: HashMap<Digest32, Token>,
    tokens_by_user: HashMap<String, VecDeque<Digest32>>,
}

struct Registered {
    /// As first published: what others are given.
    published: PublicIdentity,
    fingerprint: Fingerprint,
    /// What identifies its two keys (see [`key_digests`]).
    keys: [Digest32; 2],
}

struct Token {
    user: String,
    expires: Instant,
}

/// A successful login.
pub(crate) struct Session {
    pub token: String,
    pub expires_at_ms: u64,
    pub registered: bool,
}

impl Accounts {
    /// The accounts of a relay started with `limits`, with the registrations in `store`
    /// and a fresh challenge key.
    pub(crate) fn new(limits: &Limits, store: Arc<dyn Store>) -> Result<Self, ServerError> {
        let mut challenge_key = Zeroizing::new([0u8; 32]);
        getrandom::fill(challenge_key.as_mut()).map_err(ServerError::Rng)?;
        let mut state = State {
            identities: HashMap::new(),
            folded_names: HashMap::new(),
            keys: HashMap::new(),
            pending_names: HashSet::new(),
            pending_keys: HashSet::new(),
            registrations: RegistrationLimiter::new(
                limits.registration.registrations_per_ip_per_hour,
            ),
            used_challenges: HashMap::new(),
            tokens: HashMap::new(),
            tokens_by_user: HashMap::new(),
        };
        for published in store.identities()? {
            let identity = VerifiedIdentity::verify(&published).map_err(|error| {
                ServerError::BadStoredIdentity {
                    user: published.user.clone(),
                    reason: error.to_string(),
                }
            })?;
            if let Some(other) = state.name_taken(&identity.user) {
                // Registered before names were compared regardless of case: both stay.
                tracing::warn!(
                    user = identity.user,
                    other,
                    "two registered names differ only in letter case"
                );
            }
            state.add(&identity, published);
        }
        Ok(Self {
            state: Mutex::new(state),
            store,
            challenge_key,
            max_identities: limits.max_identities,
            token_ttl: Duration::from_secs(limits.token_ttl_secs),
            registration: limits.registration.registration,
            shared_store: AtomicBool::new(false),
        })
    }

    /// A fresh challenge for `user` to sign.
    pub(crate) fn create_challenge(&self, user: &str) -> Result<Challenge, Status> {
        let mut challenge = [0u8; CHALLENGE_LEN];
        let expires = unix_ms(SystemTime::now()).saturating_add(CHALLENGE_TTL.as_millis() as u64);
        challenge[..EXPIRY_LEN].copy_from_slice(&expires.to_be_bytes());
        getrandom::fill(&mut challenge[EXPIRY_LEN..ISSUED_LEN])
            .map_err(|error| Status::internal(format!("the server's RNG failed: {error}")))?;
        let tag = self
            .challenge_mac(user, &challenge[..ISSUED_LEN])
            .finalize();
        let tag_len = CHALLENGE_LEN - ISSUED_LEN;
        challenge[ISSUED_LEN..].copy_from_slice(&tag.into_bytes()[..tag_len]);
        Ok(challenge)
    }

    /// Checks a signed challenge; registers the user name on its first login (from
    /// `address`, with the operator's `registration_token` if it needs one); issues a
    /// token.
    pub(crate) fn login(
        &self,
        published: PublicIdentity,
        challenge: &[u8],
        signature: &[u8],
        registration_token: &str,
        address: Option<IpAddr>,
    ) -> Result<Session, Status> {
        let user = published.user.clone();
        let (challenge, expires) = self.check_challenge(&user, challenge)?;
        // Signatures are checked without the lock: they take a fraction of a millisecond
        // each, and other logins should not wait for them.
        let identity = VerifiedIdentity::verify(&published)
            .map_err(|error| Status::invalid_argument(format!("identity: {error}")))?;
        identity.verify_login(&challenge, signature).map_err(|_| {
            Status::unauthenticated("the login signature does not verify for this identity")
        })?;

        // Registered on another relay sharing the store, perhaps: known here first.
        let _ = self.identity(&user);
        let mut state = self.lock();
        state.use_challenge(challenge, expires)?;
        let registered = match state.identities.get(&user) {
            Some(known) if known.fingerprint == identity.fingerprint => false,
            Some(_) => {
                return Err(Status::already_exists(format!(
                    "the user name {user:?} is taken: it is registered to other keys; choose \
                     another name, or use the home directory that holds {user}'s keys"
                )));
            }
            None => {
                self.may_register(&mut state, &identity, registration_token, address)?;
                // The name and keys are held while the registration is stored, without
                // the lock: the store may be busy with a commit, and every request's
                // token check needs the lock.
                let folded = user.to_ascii_lowercase();
                let keys = key_digests(&identity);
                state.pending_names.insert(folded.clone());
                state.pending_keys.extend(keys);
                drop(state);
                let token =
                    (self.registration == RegistrationMode::Token).then_some(registration_token);
                // Durable before anyone is told: a restart must not free the name.
                let stored = self.store.register(&published, token);
                state = self.lock();
                state.pending_names.remove(&folded);
                for key in &keys {
                    state.pending_keys.remove(key);
                }
                match stored {
                    Ok(()) => {}
                    Err(StoreError::RegistrationToken) => {
                        // Guessing tokens costs the address its allowance too.
                        state.registrations.record(address, Instant::now());
                        return Err(Status::permission_denied(
                            "the registration token is not valid: unknown, used up or \
                             expired; ask the server's operator for a new one",
                        ));
                    }
                    Err(error) => {
                        tracing::error!(user, %error, "could not store a registration");
                        return Err(Status::unavailable(
                            "the server could not store your registration; try again later",
                        ));
                    }
                }
                state.registrations.record(address, Instant::now());
                state.add(&identity, published);
                tracing::info!(user, "registered");
                true
            }
        };
        let (token, expires) = state.issue_token(&user, self.token_ttl)?;
        tracing::info!(user, "logged in");
        Ok(Session {
            token,
            expires_at_ms: unix_ms(expires),
            registered,
        })
    }

    /// Refuses a new registration the server's policy does not allow.
    fn may_register(
        &self,
        state: &mut State,
        identity: &VerifiedIdentity,
        registration_token: &str,
        address: Option<IpAddr>,
    ) -> Result<(), Status> {
        let user = &identity.user;
        match self.registration {
            RegistrationMode::Open => {}
            RegistrationMode::Closed => {
                return Err(Status::permission_denied(format!(
                    "{user:?} is not registered, and this server registers no new names; log \
                     in with a name registered before"
                )));
            }
            RegistrationMode::Token if registration_token.trim().is_empty() => {
                return Err(Status::permission_denied(format!(
                    "{user:?} is not registered, and this server registers new names only \
                     with a registration token; ask its operator for one"
                )));
            }
            RegistrationMode::Token => {}
        }
        if let Some(other) = state.name_taken(user) {
            return Err(Status::already_exists(format!(
                "the user name {user:?} is taken: {other:?} is registered, and names that \
                 differ only in letter case are the same name; choose another"
            )));
        }
        if state.pending_names.contains(&user.to_ascii_lowercase()) {
            return Err(Status::already_exists(format!(
                "the user name {user:?} is being registered by someone else right now; choose \
                 another"
            )));
        }
        for key in key_digests(identity) {
            if let Some(owner) = state.keys.get(&key) {
                return Err(Status::already_exists(format!(
                    "these keys are already registered, to {owner:?}: every user needs keys \
                     of its own; make new ones (a new home directory) for {user:?}"
                )));
            }
            if state.pending_keys.contains(&key) {
                return Err(Status::already_exists(
                    "these keys are being registered under another name right now: every user \
                     needs keys of its own",
                ));
            }
        }
        if state.identities.len() >= self.max_identities {
            return Err(Status::resource_exhausted(format!(
                "the server holds its maximum of {} identities; try again later",
                self.max_identities
            )));
        }
        state.registrations.check(address, Instant::now())
    }

    /// Forgets a reclaimed identity: its name is free, its tokens revoked.
    pub(crate) fn forget(&self, user: &str) {
        let mut state = self.lock();
        let Some(registered) = state.identities.remove(user) else {
            return;
        };
        let folded = user.to_ascii_lowercase();
        if state.folded_names.get(&folded).map(String::as_str) == Some(user) {
            state.folded_names.remove(&folded);
            // A name registered before case was compared, the same but for it, stays.
            let twin = state
                .identities
                .keys()
                .find(|other| other.to_ascii_lowercase() == folded)
                .cloned();
            if let Some(twin) = twin {
                state.folded_names.insert(folded, twin);
            }
        }
        for digest in registered.keys {
            if state.keys.get(&digest).map(String::as_str) == Some(user) {
                state.keys.remove(&digest);
            }
        }
        for digest in state.tokens_by_user.remove(user).unwrap_or_default() {
            state.tokens.remove(&digest);
        }
        tracing::info!(user, "reclaimed");
    }

    /// The user a token was issued to, if it is valid and unexpired.
    pub(crate) fn authenticate(&self, token: &str) -> Result<String, Status> {
        let digest: Digest32 = Sha256::digest(token.as_bytes()).into();
        let mut state = self.lock();
        match state.tokens.get(&digest) {
            Some(granted) if granted.expires > Instant::now() => Ok(granted.user.clone()),
            Some(_) => {
                state.revoke(&digest);
                Err(Status::unauthenticated(
                    "the session token has expired; log in again",
                ))
            }
            None => Err(Status::unauthenticated(
                "the session token is not valid; log in again",
            )),
        }
    }

    /// The identity registered under `user`.
    pub(crate) fn identity(&self, user: &str) -> Option<PublicIdentity> {
        let known = self
            .lock()
            .identities
            .get(user)
            .map(|registered| registered.published.clone());
        known.or_else(|| self.registered_elsewhere(user))
    }

    /// From now on, other relays register users in the same store.
    pub(crate) fn share_the_store(&self) {
        self.shared_store.store(true, Ordering::Relaxed);
    }

    /// The identity another relay sharing the store registered under `user`, now known
    /// here too.
    fn registered_elsewhere(&self, user: &str) -> Option<PublicIdentity> {
        if !self.shared_store.load(Ordering::Relaxed) {
            return None;
        }
        let published = match self.store.identity(user) {
            Ok(found) => found?,
            Err(error) => {
                tracing::warn!(user, %error, "cannot look for a registration in the store");
                return None;
            }
        };
        let identity = VerifiedIdentity::verify(&published)
            .inspect_err(|error| tracing::warn!(user, %error, "a stored identity does not verify"))
            .ok()?;
        let mut state = self.lock();
        if !state.identities.contains_key(user) {
            state.add(&identity, published.clone());
        }
        Some(published)
    }

    /// Checks that this relay issued `challenge` for `user` and that it has not expired;
    /// returns it and its expiry.
    fn check_challenge(&self, user: &str, challenge: &[u8]) -> Result<(Challenge, u64), Status> {
        let challenge: Challenge = challenge.try_into().map_err(|_| refused())?;
        let (issued, tag) = challenge.split_at(ISSUED_LEN);
        self.challenge_mac(user, issued)
            .verify_truncated_left(tag)
            .map_err(|_| refused())?;
        let mut expiry = [0u8; EXPIRY_LEN];
        expiry.copy_from_slice(&issued[..EXPIRY_LEN]);
        let expires = u64::from_be_bytes(expiry);
        if expires <= unix_ms(SystemTime::now()) {
            return Err(refused());
        }
        Ok((challenge, expires))
    }

    /// HMAC-SHA256 over the user name and the issued part of a challenge.
    fn challenge_mac(&self, user: &str, issued: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.challenge_key.as_ref())
            .expect("HMAC takes keys of any length");
        mac.update(b"chat.v1/challenge");
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(issued);
        mac
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the tables consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn refused() -> Status {
    Status::unauthenticated(
        "the challenge is not one this server issued for you, or it was used or has expired; \
         ask for a new one with CreateChallenge",
    )
}

impl State {
    /// The registered name that `user` is the same as, whatever its letter case, if
    /// not `user` itself.
    fn name_taken(&self, user: &str) -> Option<&str> {
        self.folded_names
            .get(&user.to_ascii_lowercase())
            .map(String::as_str)
            .filter(|registered| *registered != user)
    }

    fn add(&mut self, identity: &VerifiedIdentity, published: PublicIdentity) {
        let user = published.user.clone();
        self.folded_names
            .entry(user.to_ascii_lowercase())
            .or_insert_with(|| user.clone());
        let keys = key_digests(identity);
        for key in keys {
            self.keys.entry(key).or_insert_with(|| user.clone());
        }
        self.identities.insert(
            user,
            Registered {
                published,
                fingerprint: identity.fingerprint,
                keys,
            },
        );
    }

    /// Marks a checked challenge as used; refuses one used before. Only challenges that
    /// came with a valid signature get here, so this table grows with real logins only.
    fn use_challenge(&mut self, challenge: Challenge, expires: u64) -> Result<(), Status> {
        let now = unix_ms(SystemTime::now());
        self.used_challenges.retain(|_, expiry| *expiry > now);
        match self.used_challenges.insert(challenge, expires) {
            Some(_) => Err(refused()),
            None => Ok(()),
        }
    }

    fn issue_token(&mut self, user: &str, ttl: Duration) -> Result<(String, SystemTime), Status> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut())
            .map_err(|error| Status::internal(format!("the server's RNG failed: {error}")))?;
        let token: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
        let digest: Digest32 = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        let live = self.tokens_by_user.entry(user.to_owned()).or_default();
        live.push_back(digest);
        let revoked: Vec<Digest32> = live
            .drain(..live.len().saturating_sub(MAX_TOKENS_PER_USER))
            .collect();
        for old in revoked {
            self.tokens.remove(&old);
        }
        self.tokens.insert(
            digest,
            Token {
                user: user.to_owned(),
                expires: now + ttl,
            },
        );
        self.forget_expired_tokens(user, now);
        Ok((token, SystemTime::now() + ttl))
    }

    fn revoke(&mut self, digest: &Digest32) {
        if let Some(token) = self.tokens.remove(digest)
            && let Some(live) = self.tokens_by_user.get_mut(&token.user)
        {
            live.retain(|other| other != digest);
        }
    }

    fn forget_expired_tokens(&mut self, user: &str, now: Instant) {
        let Some(live) = self.tokens_by_user.get_mut(user) else {
            return;
        };
        let tokens = &mut self.tokens;
        live.retain(|digest| match tokens.get(digest) {
            Some(token) if token.expires > now => true,
            _ => {
                tokens.remove(digest);
                false
            }
        });
    }
}

/// What identifies an identity's two public keys among the registered ones: the SHA-256
/// of each key in its canonical encoding (a key can be published in more than one
/// encoding, which would hash apart).
fn key_digests(identity: &VerifiedIdentity) -> [Digest32; 2] {
    [
        Sha256::digest(identity.encryption.to_der()).into(),
        Sha256::digest(identity.signing.to_der()).into(),
    ]
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}
