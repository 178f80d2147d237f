//! Who may use the relay: registered identities, outstanding login challenges and
//! session tokens.
//!
//! The first login of a user name registers it to the identity that proved it holds
//! the signing key; afterwards only that identity can log in under it. Tokens are 32
//! random bytes; only their SHA-256 is kept, so the table says nothing an attacker could
//! replay, and lookups do not compare secrets.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tonic::Status;

use super::Limits;
use crate::crypto::VerifiedIdentity;
use crate::proto::PublicIdentity;
use crate::protocol::CHALLENGE_LEN;

/// How long a challenge may be answered.
pub(crate) const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Outstanding challenges at once, over all users.
const MAX_CHALLENGES: usize = 10_000;
/// Outstanding challenges per user; a new one replaces the oldest.
const MAX_CHALLENGES_PER_USER: usize = 4;
/// Live tokens per user; a new login revokes the oldest beyond this.
pub(crate) const MAX_TOKENS_PER_USER: usize = 16;

type Digest32 = [u8; 32];

/// The relay's accounts.
pub(crate) struct Accounts {
    state: Mutex<State>,
    max_identities: usize,
    token_ttl: Duration,
}

#[derive(Default)]
struct State {
    identities: HashMap<String, Registered>,
    challenges: HashMap<[u8; CHALLENGE_LEN], Challenge>,
    challenges_by_user: HashMap<String, VecDeque<[u8; CHALLENGE_LEN]>>,
    /// SHA-256 of a token → what it grants.
    tokens: HashMap<Digest32, Token>,
    tokens_by_user: HashMap<String, VecDeque<Digest32>>,
}

struct Registered {
    /// As first published: what others are given.
    published: PublicIdentity,
    identity: VerifiedIdentity,
}

struct Challenge {
    user: String,
    expires: Instant,
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
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            state: Mutex::default(),
            max_identities: limits.max_identities,
            token_ttl: Duration::from_secs(limits.token_ttl_secs),
        }
    }

    /// A fresh challenge for `user` to sign.
    pub(crate) fn create_challenge(&self, user: &str) -> Result<[u8; CHALLENGE_LEN], Status> {
        let mut challenge = [0u8; CHALLENGE_LEN];
        getrandom::fill(&mut challenge)
            .map_err(|error| Status::internal(format!("the server's RNG failed: {error}")))?;
        let now = Instant::now();
        let mut state = self.lock();
        if state.challenges.len() >= MAX_CHALLENGES {
            state.forget_expired_challenges(now);
        }
        if state.challenges.len() >= MAX_CHALLENGES {
            return Err(Status::resource_exhausted(
                "too many logins are in progress; try again in a minute",
            ));
        }
        let pending = state.challenges_by_user.entry(user.to_owned()).or_default();
        let replaced = (pending.len() >= MAX_CHALLENGES_PER_USER)
            .then(|| pending.pop_front())
            .flatten();
        pending.push_back(challenge);
        if let Some(replaced) = replaced {
            state.challenges.remove(&replaced);
        }
        state.challenges.insert(
            challenge,
            Challenge {
                user: user.to_owned(),
                expires: now + CHALLENGE_TTL,
            },
        );
        Ok(challenge)
    }

    /// Checks a signed challenge; registers the user name on its first login; issues a
    /// token.
    pub(crate) fn login(
        &self,
        published: PublicIdentity,
        challenge: &[u8],
        signature: &[u8],
    ) -> Result<Session, Status> {
        let user = published.user.clone();
        self.take_challenge(&user, challenge)?;
        // Signatures are checked without the lock: they take a fraction of a millisecond
        // each, and other logins should not wait for them.
        let identity = VerifiedIdentity::verify(&published)
            .map_err(|error| Status::invalid_argument(format!("identity: {error}")))?;
        identity.verify_login(challenge, signature).map_err(|_| {
            Status::unauthenticated("the login signature does not verify for this identity")
        })?;

        let mut state = self.lock();
        let registered = match state.identities.get(&user) {
            Some(known)
                if known.identity.signing == identity.signing
                    && known.identity.encryption == identity.encryption =>
            {
                false
            }
            Some(_) => {
                return Err(Status::already_exists(format!(
                    "the user name {user:?} is taken: it is registered to other keys; choose \
                     another name, or use the home directory that holds {user}'s keys"
                )));
            }
            None if state.identities.len() >= self.max_identities => {
                return Err(Status::resource_exhausted(format!(
                    "the server holds its maximum of {} identities; try again later",
                    self.max_identities
                )));
            }
            None => {
                state.identities.insert(
                    user.clone(),
                    Registered {
                        published,
                        identity,
                    },
                );
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
        self.lock()
            .identities
            .get(user)
            .map(|registered| registered.published.clone())
    }

    fn take_challenge(&self, user: &str, challenge: &[u8]) -> Result<(), Status> {
        let refused = || {
            Status::unauthenticated(
                "the challenge is unknown, used or expired; ask for a new one with \
                 CreateChallenge",
            )
        };
        let challenge: [u8; CHALLENGE_LEN] = challenge.try_into().map_err(|_| refused())?;
        let mut state = self.lock();
        let issued = state.challenges.remove(&challenge).ok_or_else(refused)?;
        if let Some(pending) = state.challenges_by_user.get_mut(&issued.user) {
            pending.retain(|other| *other != challenge);
            if pending.is_empty() {
                state.challenges_by_user.remove(&issued.user);
            }
        }
        if issued.user != user || issued.expires <= Instant::now() {
            return Err(refused());
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the tables consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn issue_token(&mut self, user: &str, ttl: Duration) -> Result<(String, SystemTime), Status> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
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

    fn forget_expired_challenges(&mut self, now: Instant) {
        self.challenges
            .retain(|_, challenge| challenge.expires > now);
        let challenges = &self.challenges;
        self.challenges_by_user.retain(|_, pending| {
            pending.retain(|challenge| challenges.contains_key(challenge));
            !pending.is_empty()
        });
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}
