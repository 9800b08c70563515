//! TCP ingest listeners: which tenant and stream each one feeds, in which format, and
//! the limits of their connections (`[tcp]`).
//!
//! Plain TCP carries no token, so a listener's tenant and stream come from the config:
//!
//! ```toml
//! [[tenants.acme.listeners]]
//! addr = "0.0.0.0:5514"     # leave out to use [listen] tcp / --tcp-addr (one listener at most)
//! format = "syslog"         # "syslog" (RFC 5424 / 3164), "ndjson", or "auto" (per frame)
//! stream = "syslog"
//!
//! [tcp]
//! max_connections = 1024    # open connections per listener; more wait in the backlog
//! idle_timeout_secs = 3600  # a connection that sends nothing this long is closed
//! ```
//!
//! With no tenants configured (open mode), `[listen] tcp` feeds tenant `default`, stream
//! `default`, format `auto`, loopback clients only, like the HTTP listener. With tenants
//! configured, `[listen] tcp` is bound only when one listener leaves out `addr`.
//! [`check`] refuses any setup where two listeners could claim one address.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::{Config, DEFAULT_TENANT};
use crate::names::{is_reserved_stream, is_valid_name};

/// The stream the open-mode listener feeds (the HTTP default stream too).
pub const OPEN_MODE_STREAM: &str = "default";

/// How a listener reads its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpFormat {
    /// One JSON object per line (LF framing).
    Ndjson,
    /// Syslog, RFC 5424 or RFC 3164 per message; octet counting (RFC 6587) or LF
    /// framing per frame.
    Syslog,
    /// Per frame: a JSON object when its first byte is `{`, else syslog.
    Auto,
}

impl TcpFormat {
    pub fn name(self) -> &'static str {
        match self {
            TcpFormat::Ndjson => "ndjson",
            TcpFormat::Syslog => "syslog",
            TcpFormat::Auto => "auto",
        }
    }
}

/// One `[[tenants.T.listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `host:port` to bind; absent: `[listen] tcp` (at most one listener may omit it).
    pub addr: Option<String>,
    pub format: TcpFormat,
    pub stream: String,
}

/// `[tcp]`: connections of the TCP ingest listeners.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Open connections per listener; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_connections: 1024,
            idle_timeout_secs: 3600,
        }
    }
}

/// A listener to bind, with everything resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpListenerSpec {
    pub addr: String,
    pub tenant: String,
    pub stream: String,
    pub format: TcpFormat,
    /// Open mode: only loopback peers are served.
    pub loopback_only: bool,
}

/// The TCP listeners `config` asks for (see the module docs).
pub fn tcp_listeners(config: &Config) -> Vec<TcpListenerSpec> {
    if config.open_mode() {
        return vec![TcpListenerSpec {
            addr: config.listen.tcp.clone(),
            tenant: DEFAULT_TENANT.to_owned(),
            stream: OPEN_MODE_STREAM.to_owned(),
            format: TcpFormat::Auto,
            loopback_only: true,
        }];
    }
    config
        .tenants
        .iter()
        .flat_map(|(tenant, tc)| {
            tc.listeners.iter().map(move |l| TcpListenerSpec {
                addr: l.addr.clone().unwrap_or_else(|| config.listen.tcp.clone()),
                tenant: tenant.clone(),
                stream: l.stream.clone(),
                format: l.format,
                loopback_only: false,
            })
        })
        .collect()
}

/// Whether two literal socket addresses would claim the same port: equal, or one is the
/// unspecified address of the same family. Port 0 (any free port) claims nothing.
fn collide(a: &SocketAddr, b: &SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

/// Refuse an ambiguous or invalid listener setup, naming the entry.
pub fn check(config: &Config) -> Result<(), String> {
    let t = &config.tcp;
    if t.max_connections == 0 || t.idle_timeout_secs == 0 {
        return Err("tcp.max_connections and tcp.idle_timeout_secs must be positive".into());
    }
    crate::retention::check_secs("tcp.idle_timeout_secs", t.idle_timeout_secs)?;
    let mut without_addr = Vec::new();
    for (tenant, tc) in &config.tenants {
        for (i, l) in tc.listeners.iter().enumerate() {
            let at = format!("tenants.{tenant}.listeners[{i}]");
            if !is_valid_name(&l.stream) || is_reserved_stream(&l.stream) {
                return Err(format!(
                    "{at}: stream {:?} must be 1-64 characters of [A-Za-z0-9_.-], not starting with '_'",
                    l.stream
                ));
            }
            match &l.addr {
                None => without_addr.push(at),
                Some(a) if a.trim().is_empty() => {
                    return Err(format!(
                        "{at}: addr must not be empty (leave it out to use [listen] tcp)"
                    ))
                }
                Some(_) => {}
            }
        }
    }
    if without_addr.len() > 1 {
        return Err(format!(
            "{} leave out addr: only one listener may use [listen] tcp",
            without_addr.join(" and ")
        ));
    }
    // Every address that is bound, with who binds it; two claiming one port is refused
    // here rather than left to whichever bind happens to run first.
    let mut claims: Vec<(String, String)> = vec![
        ("listen.http".into(), config.listen.http.clone()),
        ("listen.grpc".into(), config.listen.grpc.clone()),
    ];
    if config.admin.token.is_some() {
        claims.push(("listen.admin".into(), config.listen.admin.clone()));
    }
    for (tenant, tc) in &config.tenants {
        for (i, l) in tc.listeners.iter().enumerate() {
            let addr = l.addr.clone().unwrap_or_else(|| config.listen.tcp.clone());
            claims.push((format!("tenants.{tenant}.listeners[{i}]"), addr));
        }
    }
    if config.open_mode() {
        claims.push(("listen.tcp".into(), config.listen.tcp.clone()));
    }
    for (i, (who_a, a)) in claims.iter().enumerate() {
        for (who_b, b) in &claims[i + 1..] {
            let same = match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
                (Ok(x), Ok(y)) => collide(&x, &y),
                // Host names: only the same text is known to collide.
                _ => a == b && !a.ends_with(":0"),
            };
            if same {
                return Err(format!(
                    "{who_a} and {who_b} both listen on {a}{}",
                    if a == b {
                        String::new()
                    } else {
                        format!(" / {b}")
                    }
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Result<Config, String> {
        Config::from_toml(toml).map_err(|e| e.to_string())
    }

    #[test]
    fn open_mode_serves_the_global_address_for_default() {
        let c = cfg("[listen]\ntcp = \"127.0.0.1:0\"").unwrap();
        let l = tcp_listeners(&c);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].tenant, "default");
        assert_eq!(l[0].stream, "default");
        assert_eq!(l[0].format, TcpFormat::Auto);
        assert!(l[0].loopback_only);
    }

    #[test]
    fn tenants_declare_their_listeners() {
        let c = cfg(r#"
[tenants.acme]
tokens = ["k"]
[[tenants.acme.listeners]]
addr = "127.0.0.1:5514"
format = "syslog"
stream = "sys"
[[tenants.acme.listeners]]
format = "ndjson"
stream = "app"
[tenants.globex]
tokens = ["g"]
"#)
        .unwrap();
        let l = tcp_listeners(&c);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].addr, "127.0.0.1:5514");
        assert_eq!(l[1].addr, "127.0.0.1:7072", "no addr: [listen] tcp");
        assert_eq!(
            (l[1].format, l[1].stream.as_str()),
            (TcpFormat::Ndjson, "app")
        );
        assert!(!l[0].loopback_only);
        // Tenants without listeners: nothing bound, not even [listen] tcp.
        assert!(tcp_listeners(&cfg("[tenants.a]\ntokens=[\"k\"]").unwrap()).is_empty());
    }

    #[test]
    fn ambiguous_setups_are_refused() {
        let l = |tenant: &str, addr: &str, stream: &str| {
            let addr = if addr.is_empty() {
                String::new()
            } else {
                format!("addr = \"{addr}\"\n")
            };
            format!("[[tenants.{tenant}.listeners]]\n{addr}format = \"syslog\"\nstream = \"{stream}\"\n")
        };
        for (toml, want) in [
            (
                l("a", "127.0.0.1:5514", "s") + &l("b", "127.0.0.1:5514", "s"),
                "both listen on 127.0.0.1:5514",
            ),
            (
                l("a", "0.0.0.0:5514", "s") + &l("a", "127.0.0.1:5514", "t"),
                "both listen",
            ),
            (l("a", "", "s") + &l("b", "", "t"), "only one listener"),
            (l("a", "127.0.0.1:7070", "s"), "listen.http"),
            (l("a", "127.0.0.1:7071", "s"), "listen.grpc"),
            (
                l("a", "127.0.0.1:5514", "_metrics"),
                "not starting with '_'",
            ),
            (l("a", "127.0.0.1:5514", "a b"), "stream \"a b\""),
            (l("a", " ", "s"), "must not be empty"),
            (
                "[[tenants.a.listeners]]\nformat = \"gelf\"\nstream = \"s\"\n".into(),
                "unknown variant",
            ),
            (
                "[[tenants.a.listeners]]\nformat = \"syslog\"\n".into(),
                "missing field `stream`",
            ),
            (
                "[[tenants.a.listeners]]\nformat = \"syslog\"\nstream = \"s\"\nport = 1\n".into(),
                "unknown field",
            ),
            ("[tcp]\nmax_connections = 0".into(), "tcp.max_connections"),
            (
                "[tcp]\nidle_timeout_secs = 99999999999".into(),
                "tcp.idle_timeout_secs",
            ),
        ] {
            let e = cfg(&toml).unwrap_err();
            assert!(e.contains(want), "{toml}\n=> {e}");
        }
        // Port 0 claims nothing; different ports and families do not collide.
        cfg(&(l("a", "127.0.0.1:0", "s") + &l("a", "127.0.0.1:0", "t"))).unwrap();
        cfg(&(l("a", "127.0.0.1:5514", "s") + &l("a", "[::1]:5514", "t"))).unwrap();
        // The admin address matters only when the admin API is served.
        cfg(&l("a", "127.0.0.1:7073", "s")).unwrap();
        let e = cfg(&("[admin]\ntoken = \"x\"\n".to_owned() + &l("a", "127.0.0.1:7073", "s")))
            .unwrap_err();
        assert!(e.contains("listen.admin"), "{e}");
    }
}
