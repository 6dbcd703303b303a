//! Gossip seeds as `gossip.seeds` writes them: `HOST` or `HOST:PORT`, where `HOST` is an
//! IPv4 address or a DNS name the daemon resolves.

use std::fmt;
use std::net::Ipv4Addr;

/// Longest DNS name in characters, without the trailing dot.
const MAX_DNS_NAME_CHARS: usize = 253;
/// Longest label of a DNS name.
const MAX_DNS_LABEL_CHARS: usize = 63;

/// One parsed `gossip.seeds` entry; resolve it with `(host, port)`, e.g.
/// `std::net::ToSocketAddrs`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Seed {
    /// An IPv4 address, or a DNS name in lower case without a trailing dot.
    pub host: String,
    /// 1..=65535.
    pub port: u16,
}

/// Why a seed does not parse. Displays as what is wrong with it ("has port 0").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("has an empty host")]
    EmptyHost,
    #[error("has more than one ':' (IPv6 addresses are not supported)")]
    ManyColons,
    #[error("has an empty port")]
    EmptyPort,
    #[error("has port {0:?}, which is not a number")]
    PortNotANumber(String),
    #[error("has port {0}")]
    PortOutOfRange(String),
    #[error("has host {0}, which is not an IPv4 address (a DNS name cannot be all digits)")]
    NotAnAddress(String),
    #[error("has host {0}, {1}")]
    NotUnicast(Ipv4Addr, &'static str),
    #[error("has host {0:?}, which contains {1:?}")]
    BadCharacter(String, char),
    #[error("has host {0:?}, which is {1} characters long")]
    NameTooLong(String, usize),
    #[error("has host {0:?}, which has an empty label")]
    EmptyLabel(String),
    #[error("has host {0:?}, whose label {1:?} is {2} characters long")]
    LabelTooLong(String, String, usize),
    #[error("has host {0:?}, whose label {1:?} starts or ends with '-'")]
    LabelHyphen(String, String),
}

impl Seed {
    /// Parses `HOST` or `HOST:PORT`; a seed without a port gets `default_port`.
    ///
    /// Returns `Err` iff the host is empty, is neither an IPv4 address nor a DNS name
    /// (labels of 1..=63 characters of `[A-Za-z0-9-]`, not starting or ending with '-',
    /// 253 characters at most, one trailing dot allowed), is the unspecified, a multicast
    /// or the broadcast address, or the port is not 1..=65535.
    pub fn parse(text: &str, default_port: u16) -> Result<Seed, SeedError> {
        let (host, port) = match text.split_once(':') {
            None => (text, default_port),
            Some((_, port)) if port.contains(':') => return Err(SeedError::ManyColons),
            Some((host, port)) => (host, parse_port(port)?),
        };
        Ok(Seed {
            host: parse_host(host)?,
            port,
        })
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn parse_port(port: &str) -> Result<u16, SeedError> {
    if port.is_empty() {
        return Err(SeedError::EmptyPort);
    }
    if !port.chars().all(|c| c.is_ascii_digit()) {
        return Err(SeedError::PortNotANumber(port.to_owned()));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(SeedError::PortOutOfRange(port.to_owned())),
    }
}

/// The host, normalised: an IPv4 address as written, a DNS name lower-cased and without
/// its trailing dot.
fn parse_host(host: &str) -> Result<String, SeedError> {
    if host.is_empty() {
        return Err(SeedError::EmptyHost);
    }
    // Only an address is all digits and dots: no top-level domain is numeric.
    let numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if numeric && host.chars().any(|c| c.is_ascii_digit()) {
        return ipv4_address(host).map(|address| address.to_string());
    }
    dns_name(host)
}

fn ipv4_address(host: &str) -> Result<Ipv4Addr, SeedError> {
    let address: Ipv4Addr = host
        .parse()
        .map_err(|_| SeedError::NotAnAddress(host.to_owned()))?;
    let problem = if address.is_unspecified() {
        "the unspecified address"
    } else if address.is_multicast() {
        "a multicast address"
    } else if address.is_broadcast() {
        "the broadcast address"
    } else {
        return Ok(address);
    };
    Err(SeedError::NotUnicast(address, problem))
}

fn dns_name(host: &str) -> Result<String, SeedError> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.')))
    {
        return Err(SeedError::BadCharacter(host.to_owned(), c));
    }
    if name.len() > MAX_DNS_NAME_CHARS {
        return Err(SeedError::NameTooLong(host.to_owned(), name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(SeedError::EmptyLabel(host.to_owned()));
        }
        if label.len() > MAX_DNS_LABEL_CHARS {
            let error = SeedError::LabelTooLong(host.to_owned(), label.to_owned(), label.len());
            return Err(error);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(SeedError::LabelHyphen(host.to_owned(), label.to_owned()));
        }
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(host: &str, port: u16) -> Seed {
        Seed {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn hosts_with_and_without_ports() {
        assert_eq!(Seed::parse("10.0.0.1", 7946), Ok(seed("10.0.0.1", 7946)));
        assert_eq!(Seed::parse("10.0.0.1:1", 7946), Ok(seed("10.0.0.1", 1)));
        assert_eq!(
            Seed::parse("Seed-1.Example.COM.:65535", 7946),
            Ok(seed("seed-1.example.com", 65535))
        );
        assert_eq!(Seed::parse("localhost", 2), Ok(seed("localhost", 2)));
        assert_eq!(Seed::parse("127.0.0.1", 2), Ok(seed("127.0.0.1", 2)));
        assert_eq!(Seed::parse("a.1", 2), Ok(seed("a.1", 2)));
        assert_eq!(seed("a", 1).to_string(), "a:1");
    }

    #[test]
    fn bad_ports() {
        assert_eq!(Seed::parse("a:", 1), Err(SeedError::EmptyPort));
        assert_eq!(
            Seed::parse("a:0", 1),
            Err(SeedError::PortOutOfRange("0".into()))
        );
        assert_eq!(
            Seed::parse("a:65536", 1),
            Err(SeedError::PortOutOfRange("65536".into()))
        );
        assert_eq!(
            Seed::parse("a:-1", 1),
            Err(SeedError::PortNotANumber("-1".into()))
        );
        assert_eq!(Seed::parse("::1", 1), Err(SeedError::ManyColons));
    }

    #[test]
    fn bad_hosts() {
        assert_eq!(Seed::parse("", 1), Err(SeedError::EmptyHost));
        assert_eq!(Seed::parse(":7946", 1), Err(SeedError::EmptyHost));
        assert_eq!(
            Seed::parse("10.0.0.256", 1),
            Err(SeedError::NotAnAddress("10.0.0.256".into()))
        );
        assert_eq!(
            Seed::parse("0.0.0.0", 1),
            Err(SeedError::NotUnicast(
                Ipv4Addr::UNSPECIFIED,
                "the unspecified address"
            ))
        );
        assert_eq!(
            Seed::parse("a_b", 1),
            Err(SeedError::BadCharacter("a_b".into(), '_'))
        );
        assert_eq!(
            Seed::parse("a..b", 1),
            Err(SeedError::EmptyLabel("a..b".into()))
        );
        assert_eq!(Seed::parse(".", 1), Err(SeedError::EmptyLabel(".".into())));
        assert_eq!(
            Seed::parse("-a.b", 1),
            Err(SeedError::LabelHyphen("-a.b".into(), "-a".into()))
        );
        let label = "a".repeat(64);
        assert_eq!(
            Seed::parse(&label, 1),
            Err(SeedError::LabelTooLong(label.clone(), label, 64))
        );
        let name = ["a"; 128].join(".");
        assert_eq!(
            Seed::parse(&name, 1),
            Err(SeedError::NameTooLong(name, 255))
        );
    }
}
