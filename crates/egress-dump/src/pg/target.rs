//! Where and how to connect, resolved the way libpq would from the parameters of
//! `DATABASE_URL` and the `PG*` variables ([`super::conninfo`]): the hosts and ports to
//! try, the TLS mode ([`super::tls`]), the password rules the guard enforces
//! ([`super::guard`]), timeouts and keepalives. Nothing here touches the network.

use std::path::PathBuf;
use std::time::Duration;

use egress_common::ConfigError;
use tokio_postgres::config::{ChannelBinding, TargetSessionAttrs};

use super::connect::{Address, Keepalive};
use super::conninfo::{Origin, Params};

use super::tls::{self, SslMode};

/// The `PG*` variables of this process, for [`Params::resolve`].
pub fn env_from_process() -> Vec<(String, String)> {
    let vars = super::conninfo::ENV
        .iter()
        .chain(super::conninfo::SESSION_ENV);
    vars.filter_map(|(var, _)| std::env::var(var).ok().map(|v| (var.to_string(), v)))
        .collect()
}

/// A resolved connection target: where, as whom, with which TLS.
#[derive(Clone)]
pub struct Target {
    pub(super) config: tokio_postgres::Config,
    pub(super) addresses: Vec<Address>,
    pub(super) ssl_mode: SslMode,
    pub(super) root_cert: Option<PathBuf>,
    /// `sslmode=disable` was chosen: a cleartext password may then go over TCP (as the
    /// user asked); otherwise it is refused below TLS on every TCP host.
    pub(super) plain_chosen: bool,
    pub(super) refuse_tls: Option<&'static str>,
    pub(super) connect_timeout: Duration,
    pub(super) keepalive: Option<Keepalive>,
    /// `host:port/dbname`, safe to print.
    pub display: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("display", &self.display)
            .finish()
    }
}

/// Build the connection target from libpq parameters. Errors name the variable or URL
/// parameter at fault and never echo the connection string (it may hold a password).
pub fn resolve(params: &Params, timeout: Duration) -> Result<Target, ConfigError> {
    let addresses = addresses(params)?;
    let (ssl_mode, root_cert) = tls_settings(params)?;
    let mut config = tokio_postgres::Config::new();
    let user = params
        .get("user")
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".to_string());
    config.user(&user);
    if let Some(password) = params.get("password") {
        config.password(password);
    }
    if let Some(db) = params.get("dbname") {
        config.dbname(db);
    }
    let app = params
        .get("application_name")
        .or(params.get("fallback_application_name"));
    config.application_name(app.unwrap_or("egress-dump"));
    if let Some(options) = params.get("options") {
        config.options(options);
    }
    session_settings(params, &mut config)?;
    let connect_timeout = match seconds(params, "connect_timeout")? {
        Some(0) | None => timeout,
        Some(n) => Duration::from_secs(n.max(2)),
    };
    let keepalive = keepalive(params, timeout)?;
    let plain_chosen = params.get("sslmode") == Some("disable");
    let verified = root_cert.is_some()
        && matches!(
            ssl_mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        );
    let refuse_tls = (!verified).then_some("TLS whose certificate is not verified");
    let display = format!(
        "{}/{}",
        addresses[0].display(),
        params.get("dbname").unwrap_or(&user)
    );
    Ok(Target {
        config,
        addresses,
        ssl_mode,
        root_cert,
        plain_chosen,
        refuse_tls,
        connect_timeout,
        keepalive,
        display,
    })
}

/// The servers to try, in order: `host` (a name, an address, or a socket directory), else
/// `hostaddr`, else the local socket directory when there is one, else localhost.
fn addresses(params: &Params) -> Result<Vec<Address>, ConfigError> {
    let hosts: Vec<String> = match params.get("host").or(params.get("hostaddr")) {
        Some(list) => list.split(',').map(|h| h.trim().to_string()).collect(),
        None if std::path::Path::new("/var/run/postgresql").is_dir() => {
            vec!["/var/run/postgresql".into()]
        }
        None => vec!["localhost".into()],
    };
    let ports: Vec<u16> = match params.get("port") {
        None => vec![5432],
        Some(list) => list
            .split(',')
            .map(|p| match p.trim() {
                "" => Ok(5432),
                p => p.parse::<u16>().map_err(|_| {
                    // A URL's port may be a misplaced password's first part: not echoed.
                    let shown = match params.origin("port") {
                        Some(Origin::Env) => format!(" '{p}'"),
                        _ => String::new(),
                    };
                    ConfigError::new(format!(
                        "{}{shown} is not a port number: set it to e.g. 5432",
                        params.source("port")
                    ))
                }),
            })
            .collect::<Result<_, _>>()?,
    };
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(ConfigError::new(format!(
            "{} lists {} ports for {} hosts: give one port, or one per host",
            params.source("port"),
            ports.len(),
            hosts.len()
        )));
    }
    let mut out: Vec<Address> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports[if ports.len() == 1 { 0 } else { i }];
            match h.as_str() {
                "" => Address::Tcp("localhost".into(), port),
                h if h.starts_with('/') => Address::Unix(PathBuf::from(h), port),
                h => Address::Tcp(h.to_string(), port),
            }
        })
        .collect();
    if params.get("load_balance_hosts") == Some("random") {
        use rand::seq::SliceRandom;
        out.shuffle(&mut rand::rng());
    }
    Ok(out)
}

/// `sslmode` and `sslrootcert`, as libpq 16 reads them: `sslrootcert=system` means the
/// system's roots and implies `verify-full` (a weaker mode with it is refused). Stricter
/// than libpq: with no `sslmode`, a CA file given means `verify-full` (libpq's default is
/// `prefer`, which checks nothing).
fn tls_settings(params: &Params) -> Result<(SslMode, Option<PathBuf>), ConfigError> {
    let mode = match params.get("sslmode") {
        Some(m) => Some(m.parse::<SslMode>().map_err(|_| {
            ConfigError::new(format!(
                "{} '{m}' is not valid: use disable, allow, prefer, require, verify-ca or verify-full",
                params.source("sslmode")
            ))
        })?),
        None => None,
    };
    let system = params.get("sslrootcert") == Some("system");
    let ca_file = params
        .get("sslrootcert")
        .filter(|p| !system && std::path::Path::new(p).is_file());
    if let (None, Some(missing)) = (
        mode,
        params
            .get("sslrootcert")
            .filter(|_| !system && ca_file.is_none()),
    ) {
        // A deployment that mounts an optional CA bundle and was given none.
        tracing::warn!(
            "{} names {missing}, which does not exist: connecting with sslmode prefer",
            params.source("sslrootcert")
        );
        return Ok((SslMode::Prefer, None));
    }
    let mode = match (mode, system) {
        // Secure by default: a CA given without a mode means the server must prove itself.
        (None, true) => SslMode::VerifyFull,
        (None, false) if ca_file.is_some() => SslMode::VerifyFull,
        (Some(m), true) if m != SslMode::VerifyFull => {
            return Err(ConfigError::new(format!(
                "{} 'system' trusts every public certificate authority, so it needs sslmode verify-full (not {}): set PGSSLMODE=verify-full, or give the CA bundle's file",
                params.source("sslrootcert"),
                params.get("sslmode").unwrap_or("")
            )))
        }
        (Some(m), _) => m,
        (None, false) => SslMode::Prefer,
    };
    Ok((mode, tls::root_cert_path(params.get("sslrootcert"))))
}

/// Parameters tokio-postgres takes as they are, or that are refused by value.
fn session_settings(
    params: &Params,
    config: &mut tokio_postgres::Config,
) -> Result<(), ConfigError> {
    let refuse = |name: &str, value: &str, why: &str| {
        ConfigError::new(format!(
            "{} '{value}' is not supported by egress-dump: {why}",
            params.source(name)
        ))
    };
    match params.get("target_session_attrs") {
        None | Some("any") => {}
        Some("read-write") => {
            config.target_session_attrs(TargetSessionAttrs::ReadWrite);
        }
        Some(v) => return Err(refuse("target_session_attrs", v, "use any or read-write")),
    }
    match params.get("channel_binding") {
        None | Some("prefer") => config.channel_binding(ChannelBinding::Prefer),
        Some("require") => config.channel_binding(ChannelBinding::Require),
        Some("disable") => config.channel_binding(ChannelBinding::Disable),
        Some(v) => {
            return Err(refuse(
                "channel_binding",
                v,
                "use disable, prefer or require",
            ))
        }
    };
    if let Some(v) = params.get("client_encoding") {
        if !matches!(v.to_ascii_uppercase().as_str(), "UTF8" | "UTF-8") {
            return Err(refuse(
                "client_encoding",
                v,
                "the CSV is always written in UTF8",
            ));
        }
    }
    // Parameters with nothing to set: only the values that mean what we do anyway.
    let only = [
        (
            "gssencmode",
            ["disable", "prefer"],
            "GSSAPI encryption is not implemented; use disable or prefer",
        ),
        (
            "load_balance_hosts",
            ["disable", "random"],
            "use disable or random",
        ),
    ];
    for (name, accepted, why) in only {
        if let Some(v) = params.get(name).filter(|v| !accepted.contains(v)) {
            return Err(refuse(name, v, why));
        }
    }
    Ok(())
}

fn seconds(params: &Params, name: &str) -> Result<Option<u64>, ConfigError> {
    params
        .get(name)
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                ConfigError::new(format!(
                    "{} '{v}' is not a whole number",
                    params.source(name)
                ))
            })
        })
        .transpose()
}

/// Keepalive probes from `keepalives*` and `tcp_user_timeout` (milliseconds, as in
/// libpq), with defaults that notice a vanished database within about a minute.
fn keepalive(params: &Params, timeout: Duration) -> Result<Option<Keepalive>, ConfigError> {
    if params.get("keepalives") == Some("0") {
        return Ok(None);
    }
    let idle = seconds(params, "keepalives_idle")?.unwrap_or(30);
    let interval = seconds(params, "keepalives_interval")?.unwrap_or(10);
    let retries = seconds(params, "keepalives_count")?.unwrap_or(3);
    let user_timeout = match seconds(params, "tcp_user_timeout")? {
        Some(ms) if ms > 0 => Duration::from_millis(ms),
        _ => timeout.max(Duration::from_secs(30)),
    };
    Ok(Some(Keepalive {
        idle: Duration::from_secs(idle),
        interval: Duration::from_secs(interval),
        retries: retries as u32,
        user_timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(url: Option<&str>, env: &[(&str, &str)]) -> Params {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Params::resolve(url, &env).unwrap()
    }

    #[test]
    fn env_fills_what_the_url_leaves_out() {
        let env = [
            ("PGHOST", "db"),
            ("PGPORT", "6543"),
            ("PGUSER", "u"),
            ("PGDATABASE", "d"),
        ];
        let t = resolve(&params(None, &env), Duration::from_secs(1)).unwrap();
        assert_eq!(t.display, "db:6543/d");
        let t = resolve(
            &params(Some("postgresql://x@h:1/y"), &env),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(t.display, "h:1/y");
        let t = resolve(
            &params(Some("host=/tmp/sock port=7"), &env),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(t.addresses, [Address::Unix("/tmp/sock".into(), 7)]);
        assert!(!t.plain_chosen);
    }

    #[test]
    fn bad_values_are_named_by_their_source() {
        type Env<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Option<&str>, Env, &str); 6] = [
            (None, &[("PGPORT", "x")], "PGPORT 'x' is not a port number"),
            (
                None,
                &[("PGSSLMODE", "sometimes")],
                "PGSSLMODE 'sometimes' is not valid",
            ),
            (
                Some("postgresql://h/d?sslmode=maybe"),
                &[],
                "sslmode in DATABASE_URL 'maybe'",
            ),
            (
                Some("postgresql://h/d?target_session_attrs=standby"),
                &[],
                "target_session_attrs in DATABASE_URL 'standby' is not supported",
            ),
            (
                None,
                &[("PGGSSENCMODE", "require")],
                "PGGSSENCMODE 'require' is not supported by egress-dump: GSSAPI",
            ),
            (
                Some("postgresql://h/d?load_balance_hosts=any"),
                &[],
                "load_balance_hosts in DATABASE_URL 'any' is not supported by egress-dump: use disable or random",
            ),
        ];
        for (url, env, says) in cases {
            let err = resolve(&params(url, env), Duration::from_secs(1)).unwrap_err();
            assert!(err.to_string().starts_with(says), "{err}");
        }
    }

    #[test]
    fn system_roots_mean_verify_full_and_disable_is_honoured() {
        let t = resolve(
            &params(None, &[("PGSSLROOTCERT", "system"), ("PGHOST", "h")]),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyFull);
        let weak = params(
            None,
            &[("PGSSLROOTCERT", "system"), ("PGSSLMODE", "require")],
        );
        assert!(resolve(&weak, Duration::from_secs(1))
            .unwrap_err()
            .to_string()
            .contains("verify-full"));
        let t = resolve(
            &params(
                Some("postgresql://h/d?sslmode=disable"),
                &[("PGSSLMODE", "require")],
            ),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::Disable);
        assert!(
            t.plain_chosen,
            "sslmode=disable chosen explicitly allows a cleartext password"
        );
        let t = resolve(
            &params(Some("postgresql://h/d"), &[]),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            (t.ssl_mode, t.plain_chosen, t.refuse_tls.is_some()),
            (SslMode::Prefer, false, true)
        );
    }
}
