//! The client addresses with connections open (IPv6: one /64 network each), what each
//! holds, and the places an admitted connection keeps until it is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limits::NetworkLimits;

/// The places an admitted connection holds until it is dropped.
pub(crate) struct Admitted {
    _permit: OwnedSemaphorePermit,
    _host: HostPlace,
}

impl Admitted {
    pub(super) fn new(permit: OwnedSemaphorePermit, hosts: Arc<Hosts>, host: Arc<Host>) -> Self {
        Self {
            _permit: permit,
            _host: HostPlace { hosts, host },
        }
    }
}

/// One connection counted against its host.
struct HostPlace {
    hosts: Arc<Hosts>,
    host: Arc<Host>,
}

impl Drop for HostPlace {
    fn drop(&mut self) {
        self.hosts.leave(&self.host);
    }
}

/// One client address (IPv6: one /64 network) with connections open.
pub(super) struct Host {
    address: IpAddr,
    /// RPCs that need no login in progress from this address.
    pub(super) unauthenticated: Arc<Semaphore>,
    /// Health Watch and reflection streams open from this address: apart from the
    /// above, so that they never take the place of a login.
    pub(super) streams: Arc<Semaphore>,
}

/// The addresses with connections open, and how many each has.
#[derive(Default)]
pub(super) struct Hosts(Mutex<HashMap<IpAddr, (usize, Arc<Host>)>>);

impl Hosts {
    /// Counts one more connection from `ip`, unless that address is at its bound.
    pub(super) fn enter(&self, ip: IpAddr, limits: &NetworkLimits) -> Option<Arc<Host>> {
        let address = host_address(ip);
        let mut hosts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (connections, host) = hosts.entry(address).or_insert_with(|| {
            let host = Host {
                address,
                unauthenticated: Arc::new(Semaphore::new(limits.max_unauthenticated_per_ip)),
                streams: Arc::new(Semaphore::new(limits.max_unauthenticated_streams_per_ip())),
            };
            (0, Arc::new(host))
        });
        if *connections >= limits.max_connections_per_ip {
            return None;
        }
        *connections += 1;
        Some(host.clone())
    }

    fn leave(&self, host: &Host) {
        let mut hosts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((connections, _)) = hosts.get_mut(&host.address) {
            *connections -= 1;
            if *connections == 0 {
                hosts.remove(&host.address);
            }
        }
    }
}

/// The address that counts for `ip`: itself for IPv4 (also when IPv4-mapped), its /64
/// network for IPv6, since one host is commonly given a whole /64.
fn host_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ipv6_network_counts_as_one_host() {
        let address = |text: &str| host_address(text.parse().unwrap());
        assert_eq!(address("2001:db8::1"), address("2001:db8::ffff:1:2"));
        assert_ne!(address("2001:db8::1"), address("2001:db8:0:1::1"));
        assert_eq!(address("::ffff:192.0.2.7"), address("192.0.2.7"));
        assert_ne!(address("192.0.2.7"), address("192.0.2.8"));
    }

    #[test]
    fn a_host_is_forgotten_with_its_last_connection() {
        let limits = NetworkLimits {
            max_connections_per_ip: 2,
            ..NetworkLimits::DEFAULT
        };
        let hosts = Hosts::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let first = hosts.enter(ip, &limits).unwrap();
        let second = hosts.enter(ip, &limits).unwrap();
        assert!(hosts.enter(ip, &limits).is_none());
        assert!(hosts.enter("192.0.2.8".parse().unwrap(), &limits).is_some());
        hosts.leave(&first);
        assert!(hosts.enter(ip, &limits).is_some());
        hosts.leave(&second);
        hosts.leave(&first);
        assert!(!hosts.0.lock().unwrap().contains_key(&ip));
    }
}
