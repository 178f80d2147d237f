//! Who may register a new user name: the operator's choice of open, token-only or
//! closed registration, and a limit on registrations per client address, so that one
//! host cannot take every free name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tonic::Status;

/// How new names may be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistrationMode {
    /// Anyone may register a free name.
    Open,
    /// A registration needs a registration token from the operator
    /// (`chat-server registration-token create`).
    Token,
    /// Nobody new may register; registered users still log in.
    Closed,
}

/// The operator's registration policy.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistrationPolicy {
    /// Who may register a new user name: open (anyone), token (with a registration
    /// token from `chat-server registration-token create`), or closed (nobody new).
    #[arg(long, env = "CHAT_REGISTRATION", value_enum, default_value_t = RegistrationPolicy::DEFAULT.registration)]
    pub registration: RegistrationMode,
    /// New user names one client address may register per hour (IPv6 addresses count
    /// by /64 network); beyond, RESOURCE_EXHAUSTED until the allowance refills, which it
    /// does continuously. A refused registration token uses it up too. Behind a proxy
    /// every client has the proxy's address.
    #[arg(long, env = "CHAT_REGISTRATIONS_PER_IP_PER_HOUR", value_parser = clap::value_parser!(u32).range(1..), default_value_t = RegistrationPolicy::DEFAULT.registrations_per_ip_per_hour)]
    pub registrations_per_ip_per_hour: u32,
}

impl RegistrationPolicy {
    pub const DEFAULT: Self = Self {
        registration: RegistrationMode::Open,
        registrations_per_ip_per_hour: 60,
    };
}

impl Default for RegistrationPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Addresses remembered at most: beyond, those whose allowance is whole again are
/// forgotten (they would start afresh anyway).
const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// Registrations per client address: a token bucket of an hour's allowance, refilled
/// continuously.
pub(crate) struct RegistrationLimiter {
    per_hour: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

struct Bucket {
    /// Registrations this address may still make now.
    allowance: f64,
    updated: Instant,
}

impl RegistrationLimiter {
    pub(crate) fn new(per_hour: u32) -> Self {
        Self {
            per_hour: f64::from(per_hour.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Whether `address` may register a name now (without using its allowance: see
    /// [`Self::record`]).
    pub(crate) fn check(&mut self, address: Option<IpAddr>, now: Instant) -> Result<(), Status> {
        let per_hour = self.per_hour;
        let Some(bucket) = address.map(|address| self.refilled(address, now)) else {
            return Ok(());
        };
        if bucket.allowance >= 1.0 {
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.allowance) * 3600.0 / per_hour);
        Err(Status::resource_exhausted(format!(
            "too many new user names from your address ({per_hour} an hour at most); try \
             again in {} s, or log in with a name you registered",
            wait.as_secs().max(1)
        )))
    }

    /// Uses one registration of `address`'s allowance.
    pub(crate) fn record(&mut self, address: Option<IpAddr>, now: Instant) {
        if let Some(address) = address {
            let bucket = self.refilled(address, now);
            bucket.allowance = (bucket.allowance - 1.0).max(0.0);
        }
    }

    fn refilled(&mut self, address: IpAddr, now: Instant) -> &mut Bucket {
        if self.buckets.len() >= MAX_TRACKED_ADDRESSES
            && !self.buckets.contains_key(&network(address))
        {
            let per_hour = self.per_hour;
            self.buckets
                .retain(|_, bucket| refill(bucket, per_hour, now) < per_hour);
        }
        let per_hour = self.per_hour;
        let bucket = self.buckets.entry(network(address)).or_insert(Bucket {
            allowance: per_hour,
            updated: now,
        });
        refill(bucket, per_hour, now);
        bucket
    }
}

/// Brings `bucket` up to `now`; returns its allowance.
fn refill(bucket: &mut Bucket, per_hour: f64, now: Instant) -> f64 {
    let hours = now.saturating_duration_since(bucket.updated).as_secs_f64() / 3600.0;
    bucket.allowance = (bucket.allowance + hours * per_hour).min(per_hour);
    bucket.updated = now;
    bucket.allowance
}

/// What counts as one client: an IPv4 address, or an IPv6 /64 (one host usually has a
/// whole /64 to pick addresses from). An IPv4-mapped IPv6 address is its IPv4 address.
fn network(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_hourly_allowance_then_waits_for_it_to_refill() {
        let mut limiter = RegistrationLimiter::new(3);
        let start = Instant::now();
        let here: IpAddr = "192.0.2.1".parse().unwrap();
        let there: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            limiter.check(Some(here), start).unwrap();
            limiter.record(Some(here), start);
        }
        let refused = limiter.check(Some(here), start).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("1200 s"),
            "{}",
            refused.message()
        );
        // Another address is not held up; checking alone uses nothing.
        limiter.check(Some(there), start).unwrap();
        limiter.check(Some(there), start).unwrap();
        // A third of an hour later, one more.
        let later = start + Duration::from_secs(1200);
        limiter.check(Some(here), later).unwrap();
        limiter.record(Some(here), later);
        assert!(limiter.check(Some(here), later).is_err());
        // Without an address (not a TCP connection) nothing is limited.
        limiter.check(None, start).unwrap();
    }

    #[test]
    fn an_ipv6_host_counts_by_its_slash_64() {
        let mut limiter = RegistrationLimiter::new(1);
        let now = Instant::now();
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_net: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limiter.record(Some(first), now);
        assert!(limiter.check(Some(same_net), now).is_err());
        limiter.check(Some(other_net), now).unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        limiter.record(Some(mapped), now);
        assert!(
            limiter
                .check(Some("192.0.2.7".parse().unwrap()), now)
                .is_err()
        );
    }
}
