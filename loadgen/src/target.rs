//! The server under load, named by a URL: `credshard://HOST:PORT`, `credshards://HOST:PORT`
//! (TLS), or `redis://HOST:PORT` for a stock redis-server as the peer (RESP GET/SET).
//! `rediss://` (TLS) is refused with a clear message rather than misread.

use std::fmt;

use crate::redis::REDIS_PORT_DEFAULT;

/// Port a credshard server listens on by default.
pub const CREDSHARD_PORT_DEFAULT: u16 = 7373;

/// A parsed `--target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A credshard server; `address` is `HOST:PORT`, ready for a socket-address lookup.
    Credshard { address: String },
    /// A credshard server over TLS; `host` (brackets removed) is the name its certificate must
    /// carry unless `--tls-name` says otherwise.
    CredshardTls { address: String, host: String },
    /// A redis server, spoken to in RESP2; `address` is `HOST:PORT`.
    Redis { address: String },
}

impl Target {
    /// Parses `credshard://HOST[:PORT]`, `credshards://HOST[:PORT]` or `redis://HOST[:PORT]`
    /// (IPv6 hosts in brackets: `credshard://[::1]:7373`).
    ///
    /// # Errors
    /// A one-line message for other schemes, a missing host or an invalid port.
    pub fn parse(text: &str) -> Result<Target, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err("must look like credshard://HOST:PORT or redis://HOST:PORT".to_owned());
        };
        let default_port = match scheme {
            "credshard" | "credshards" => CREDSHARD_PORT_DEFAULT,
            "redis" => REDIS_PORT_DEFAULT,
            "rediss" => return Err("rediss:// (TLS) is not supported; use redis://HOST:PORT".to_owned()),
            other => {
                return Err(format!(
                    "unknown scheme `{other}`; use credshard://, credshards:// (TLS) or redis://HOST:PORT"
                ))
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(format!("must look like {scheme}://HOST:PORT"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| "invalid host".to_owned())?;
        let port = match port {
            None => default_port,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(format!("invalid port `{port}`")),
            },
        };
        let address = format!("{host}:{port}");
        Ok(match scheme {
            "redis" => Target::Redis { address },
            "credshards" => {
                let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                Target::CredshardTls { address, host }
            }
            _ => Target::Credshard { address },
        })
    }
}

/// Splits `host:port`, `host`, `[v6]:port` or `[v6]`; the host keeps its brackets so that
/// `host:port` can be formatted back for a lookup.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, rest) = authority.split_at(close + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.is_empty() || host.contains(':') || port.is_some_and(|port| port.contains(':')) {
        return None;
    }
    Some((host, port))
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Credshard { address } => write!(formatter, "credshard://{address}"),
            Target::CredshardTls { address, .. } => write!(formatter, "credshards://{address}"),
            Target::Redis { address } => write!(formatter, "redis://{address}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> String {
        match Target::parse(text).unwrap() {
            Target::Credshard { address } => address,
            _ => panic!("{text} is not a plain credshard target"),
        }
    }

    #[test]
    fn credshard_targets() {
        assert_eq!(address("credshard://127.0.0.1:7373"), "127.0.0.1:7373");
        assert_eq!(address("credshard://localhost"), "localhost:7373");
        assert_eq!(address("credshard://[::1]:9000/"), "[::1]:9000");
        assert_eq!(address("credshard://[::1]"), "[::1]:7373");
        assert_eq!(Target::parse("credshard://h:1").unwrap().to_string(), "credshard://h:1");
    }

    #[test]
    fn tls_targets_keep_the_host_for_the_certificate() {
        let tls = |address: &str, host: &str| Target::CredshardTls {
            address: address.to_owned(),
            host: host.to_owned(),
        };
        assert_eq!(Target::parse("credshards://localhost"), Ok(tls("localhost:7373", "localhost")));
        assert_eq!(Target::parse("credshards://[::1]:9"), Ok(tls("[::1]:9", "::1")));
        assert_eq!(Target::parse("credshards://h:1").unwrap().to_string(), "credshards://h:1");
    }

    #[test]
    fn redis_targets() {
        let redis = |address: &str| Target::Redis { address: address.to_owned() };
        assert_eq!(Target::parse("redis://127.0.0.1:6391"), Ok(redis("127.0.0.1:6391")));
        assert_eq!(Target::parse("redis://localhost/"), Ok(redis("localhost:6379")));
        assert_eq!(Target::parse("redis://[::1]"), Ok(redis("[::1]:6379")));
        assert_eq!(Target::parse("redis://h:1").unwrap().to_string(), "redis://h:1");
        for bad in ["redis://", "redis://h:0", "redis://u:p@h:1", "redis://h:1/0"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejected_targets_say_why() {
        assert!(Target::parse("rediss://127.0.0.1:6379").unwrap_err().contains("not supported"));
        assert!(Target::parse("http://x:1").unwrap_err().contains("unknown scheme"));
        assert!(Target::parse("127.0.0.1:7373").is_err());
        for bad in
            ["credshard://", "credshard://:7373", "credshard://h:0", "credshard://h:x", "credshard://h:1/p"]
        {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(Target::parse("credshard://::1:7373").is_err());
    }
}
