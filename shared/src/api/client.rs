//! Who is calling, as far as limits on failed attempts are concerned: the
//! client's network address, by default the TCP peer, or the address a
//! trusted proxy names in `CLIENT_IP_HEADER`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, HeaderName, request::Parts},
};

use super::AppState;

/// The client a request comes from, reduced to what one party controls: an
/// IPv4 address, or the /64 prefix of an IPv6 address (one host usually
/// holds a whole /64, so counting single IPv6 addresses would let it rotate
/// through billions of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(IpAddr);

impl ClientIp {
    /// The client behind `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut segments = v6.segments();
                    segments[4..].fill(0);
                    IpAddr::V6(Ipv6Addr::from(segments))
                }
            },
            v4 => v4,
        };
        Self(ip)
    }

    /// The address (an IPv6 client's /64 prefix).
    pub fn ip(&self) -> IpAddr {
        self.0
    }

    /// The client named by `header` (the last address in it: the one the
    /// nearest proxy appended, which the client cannot forge), or else the
    /// TCP peer. Without either (a router called without a listener, as in
    /// unit tests) every request is the unspecified address.
    pub fn resolve(
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
        header: Option<&HeaderName>,
    ) -> Self {
        let forwarded = header.and_then(|name| {
            headers
                .get_all(name)
                .iter()
                .next_back()?
                .to_str()
                .ok()?
                .rsplit(',')
                .next()?
                .trim()
                .parse::<IpAddr>()
                .ok()
        });
        let ip = forwarded
            .or(peer.map(|p| p.ip()))
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Self::new(ip)
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(Self::resolve(
            &parts.headers,
            peer,
            state.client_ip_header.as_ref(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            ClientIp::new(ip("2001:db8:1:2:aaaa::1")),
            ClientIp::new(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            ClientIp::new(ip("2001:db8:1:2::1")),
            ClientIp::new(ip("2001:db8:1:3::1"))
        );
        assert_eq!(ClientIp::new(ip("::ffff:192.0.2.7")).ip(), ip("192.0.2.7"));
    }

    #[test]
    fn the_header_is_read_only_when_configured_and_its_last_entry_wins() {
        let peer: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.1, 198.51.100.2".parse().unwrap(),
        );
        let name = HeaderName::from_static("x-forwarded-for");
        assert_eq!(
            ClientIp::resolve(&headers, Some(peer), None).ip(),
            ip("10.0.0.9")
        );
        assert_eq!(
            ClientIp::resolve(&headers, Some(peer), Some(&name)).ip(),
            ip("198.51.100.2")
        );
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(
            ClientIp::resolve(&headers, Some(peer), Some(&name)).ip(),
            ip("10.0.0.9"),
            "an unreadable header falls back to the peer"
        );
    }
}
