//! The egress policy of fetches: a guard against server-side request forgery.
//!
//! A tenant's URL must not turn the controller into a reader of what only the cluster can
//! reach: cloud metadata endpoints (which hand out credentials), link-local services, or with an
//! allow list anything outside it. The policy is checked at connect time on every hop: names
//! through the resolver hook (every resolved address is checked, and only allowed ones are
//! dialled, so a name that also resolves to a denied address cannot be used to reach it), IP
//! literals before the first request and in the redirect policy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

#[cfg(test)]
use crate::config::parse_cidr;
use crate::config::{FetchConfig, default_deny_cidrs};
use crate::controller::upstream::https::{self, PlainHttp};

/// Which networks fetches may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    deny: Vec<IpNet>,
    allow: Option<Vec<IpNet>>,
    /// `fetch.require_https`: plain `http://` is refused on every hop (see [`https`]).
    require_https: bool,
}

impl Default for EgressPolicy {
    /// The default deny list (link-local and metadata addresses), no allow list.
    fn default() -> Self {
        Self { deny: default_deny_cidrs(), allow: None, require_https: false }
    }
}

/// A connection the policy refused, naming the address and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connecting to {address} is denied by {rule}")]
pub struct Denied {
    pub address: IpAddr,
    pub rule: String,
}

impl EgressPolicy {
    pub fn new(deny: Vec<IpNet>, allow: Option<Vec<IpNet>>) -> Self {
        Self { deny, allow, require_https: false }
    }

    /// The same policy, refusing plain `http://` when `require_https` (`fetch.require_https`).
    pub fn requiring_https(mut self, require_https: bool) -> Self {
        self.require_https = require_https;
        self
    }

    /// Whether a request (or a redirect hop, with `redirect`) may go to `url`'s scheme.
    pub fn check_scheme(&self, url: &Url, redirect: bool) -> Result<(), PlainHttp> {
        https::check(self.require_https, url, redirect)
    }

    /// Whether fetches may connect to `address`. IPv4-mapped IPv6 addresses are checked as the
    /// IPv4 address they are, so `::ffff:169.254.169.254` is no way around the deny list.
    pub fn check(&self, address: IpAddr) -> Result<(), Denied> {
        let address = address.to_canonical();
        if let Some(net) = self.deny.iter().find(|n| n.contains(&address)) {
            return Err(Denied { address, rule: format!("{} entry {net}", FetchConfig::deny_cidrs) });
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(|n| n.contains(&address)) => {
                let list = allow.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                Err(Denied { address, rule: format!("{} (not in {list})", FetchConfig::allow_cidrs) })
            }
            _ => Ok(()),
        }
    }

    /// Checks a URL whose host is an IP literal (names are checked when they are resolved).
    pub fn check_literal(&self, url: &Url) -> Result<(), Denied> {
        let literal = url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']'));
        match literal.and_then(|h| h.parse::<IpAddr>().ok()) {
            Some(ip) => self.check(ip),
            None => Ok(()),
        }
    }

    /// For requests through a proxy, which resolves names itself: refuses a URL whose host
    /// resolves here to any denied address. A name that does not resolve here is left to the
    /// proxy (and to the proxy's own policy).
    pub async fn check_resolved(&self, url: &Url) -> Result<(), Denied> {
        self.check_literal(url)?;
        let Some(host) = url.host_str() else { return Ok(()) };
        if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let Ok(addrs) = tokio::net::lookup_host((host, 0)).await else { return Ok(()) };
        for addr in addrs {
            self.check(addr.ip())?;
        }
        Ok(())
    }

    /// A resolver for reqwest that only yields addresses this policy allows.
    pub fn resolver(self: &Arc<Self>) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { policy: self.clone() })
    }
}

/// The system resolver, filtered by an [`EgressPolicy`].
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

/// Every address of a name was denied.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to denied addresses: {denied}")]
pub struct HostDenied {
    pub host: String,
    #[source]
    pub denied: Denied,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_denied = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(denied) => {
                        first_denied.get_or_insert(denied);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), first_denied) {
                (true, Some(denied)) => {
                    Err(Box::new(HostDenied { host, denied }) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|c| parse_cidr(c).unwrap()).collect()
    }

    #[test]
    fn the_default_denies_metadata_and_link_local_only() {
        let p = EgressPolicy::default();
        for denied in ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254"] {
            let e = p.check(denied.parse().unwrap()).unwrap_err();
            assert!(e.rule.starts_with("fetch.deny_cidrs entry"), "{denied}: {e}");
        }
        for allowed in ["10.0.0.1", "127.0.0.1", "8.8.8.8", "::1", "2001:db8::1", "fd00:ec2::253"] {
            assert!(p.check(allowed.parse().unwrap()).is_ok(), "{allowed}");
        }
    }

    #[test]
    fn an_allow_list_confines_and_the_deny_list_still_wins() {
        let p = EgressPolicy::new(nets(&["10.1.2.3"]), Some(nets(&["10.0.0.0/8", "2001:db8::/32"])));
        assert!(p.check("10.9.9.9".parse().unwrap()).is_ok());
        assert!(p.check("2001:db8::5".parse().unwrap()).is_ok());
        let e = p.check("10.1.2.3".parse().unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "connecting to 10.1.2.3 is denied by fetch.deny_cidrs entry 10.1.2.3/32");
        let e = p.check("192.168.1.1".parse().unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "connecting to 192.168.1.1 is denied by fetch.allow_cidrs (not in 10.0.0.0/8, 2001:db8::/32)"
        );
    }

    #[test]
    fn literals_are_checked_and_names_left_to_the_resolver() {
        let p = EgressPolicy::default();
        assert!(p.check_literal(&Url::parse("http://169.254.169.254/latest/meta-data/").unwrap()).is_err());
        assert!(p.check_literal(&Url::parse("http://[fd00:ec2::254]/").unwrap()).is_err());
        assert!(p.check_literal(&Url::parse("http://[::ffff:a9fe:a9fe]/").unwrap()).is_err(), "mapped 169.254.169.254");
        assert!(p.check_literal(&Url::parse("http://metadata.internal/").unwrap()).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_drops_denied_addresses_and_names_the_rule() {
        let denied = Arc::new(EgressPolicy::new(nets(&["127.0.0.0/8", "::1"]), None));
        let err = match denied.resolver().resolve("localhost".parse().unwrap()).await {
            Err(e) => e,
            Ok(addrs) => panic!("localhost resolved to allowed {:?}", addrs.collect::<Vec<_>>()),
        };
        assert!(
            crate::controller::upstream::found_in_chain::<Denied>(err.as_ref())
                .is_some_and(|d| d.rule.contains("fetch.deny_cidrs")),
            "{err}"
        );
        let v6_denied = Arc::new(EgressPolicy::new(nets(&["::1"]), None));
        let addrs: Vec<SocketAddr> =
            v6_denied.resolver().resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_ipv4()), "{addrs:?}");
    }
}
