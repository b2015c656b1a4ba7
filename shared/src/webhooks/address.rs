//! Where a webhook may be sent. An endpoint's URL is the tenant's to choose,
//! so without a check Herald would make requests into its own network on a
//! tenant's behalf (cloud metadata at 169.254.169.254, the database's
//! admin port, ...). Every address a URL resolves to must be public, unless
//! an operator allow-lists a network (tests allow-list loopback, where their
//! receivers listen). The check applies to resolved addresses, and the
//! sender connects to the address it checked, so a name that resolves
//! differently later (DNS rebinding) gains nothing.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

/// A network in CIDR notation (`127.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a network like 10.0.0.0/8"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("`{prefix}` is not a prefix length of 0 to {max}"))?;
        Ok(Self { addr, prefix })
    }
}

impl Network {
    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d`: judged by the IPv4 rules, or a mapped
/// loopback address would pass as a public IPv6 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Why an address was refused: the kind of network it is in.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("not unicast")
    } else {
        None
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if ip.is_multicast() {
        Some("not unicast")
    } else {
        None
    }
}

/// The operator's allow-list; empty by default (only public addresses).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<Network>,
}

impl Policy {
    /// A policy allowing, besides public addresses, those in `allowed`.
    pub fn new(allowed: Vec<Network>) -> Self {
        Self { allowed }
    }

    /// Accepts a public address or an allow-listed one; otherwise says why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match non_public(ip) {
            Some(_) if self.allowed.iter().any(|n| n.contains(ip)) => Ok(()),
            Some(kind) => Err(format!(
                "{ip} is a {kind} address; webhooks go to public addresses only unless allow-listed"
            )),
            None => Ok(()),
        }
    }

    /// Resolves `host:port` and checks every address it resolves to: one
    /// refused address refuses the endpoint (a name must not mix public and
    /// private answers to slip through). Answers the addresses to connect to.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("{host} does not resolve: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        for addr in &addrs {
            self.check(addr.ip())?;
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_and_link_local_are_refused() {
        let policy = Policy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(policy.check(ip(refused)).is_err(), "{refused}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(policy.check(ip(public)).is_ok(), "{public}");
        }
    }

    #[test]
    fn an_allow_listed_network_is_accepted_and_nothing_more() {
        let policy = Policy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(policy.check(ip("127.0.0.1")).is_ok());
        assert!(policy.check(ip("::ffff:127.0.0.2")).is_ok());
        assert!(policy.check(ip("fd12::1")).is_ok());
        assert!(policy.check(ip("10.0.0.1")).is_err());
        assert!(policy.check(ip("::1")).is_err());
    }

    #[test]
    fn networks_parse_strictly() {
        assert!("10.0.0.0/8".parse::<Network>().is_ok());
        assert!(
            "0.0.0.0/0"
                .parse::<Network>()
                .unwrap()
                .contains(ip("1.2.3.4"))
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fe80::/129",
            "nope/8",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        let policy = Policy::default();
        assert!(policy.resolve("localhost", 80).await.is_err());
        let allowing = Policy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        let addrs = allowing.resolve("localhost", 8080).await.unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.port() == 8080 && a.ip().is_loopback())
        );
    }
}
