//! The server under load, named by a URL: `credshard://HOST:PORT` for now. Redis is the peer
//! the loadgen will measure beside credshard (a later issue); until then a `redis://` target
//! is refused with a clear message rather than misread.

use std::fmt;

/// Port a credshard server listens on by default.
pub const CREDSHARD_PORT_DEFAULT: u16 = 7373;

/// A parsed `--target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A credshard server; `address` is `HOST:PORT`, ready for a socket-address lookup.
    Credshard { address: String },
}

impl Target {
    /// Parses `credshard://HOST[:PORT]` (IPv6 hosts in brackets: `credshard://[::1]:7373`).
    ///
    /// # Errors
    /// A one-line message for other schemes, a missing host or an invalid port.
    pub fn parse(text: &str) -> Result<Target, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err("must look like credshard://HOST:PORT".to_owned());
        };
        match scheme {
            "credshard" => {}
            "redis" | "rediss" => {
                return Err(format!("{scheme}:// is not supported yet; only credshard://HOST:PORT is"))
            }
            other => return Err(format!("unknown scheme `{other}`; use credshard://HOST:PORT")),
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err("must look like credshard://HOST:PORT".to_owned());
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| "invalid host".to_owned())?;
        let port = match port {
            None => CREDSHARD_PORT_DEFAULT,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(format!("invalid port `{port}`")),
            },
        };
        Ok(Target::Credshard { address: format!("{host}:{port}") })
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> String {
        match Target::parse(text).unwrap() {
            Target::Credshard { address } => address,
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
    fn rejected_targets_say_why() {
        assert!(Target::parse("redis://127.0.0.1:6379").unwrap_err().contains("not supported yet"));
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
