//! libpq's connection parameters: a `postgresql://` URL or a `key=value` string, with the
//! `PG*` variables filling whatever it leaves out (connection-string parameters win, as in
//! libpq). Every parameter libpq accepts either works as in libpq or is refused by name;
//! nothing is silently changed.

use std::collections::BTreeMap;

use egress_common::ConfigError;

/// Parameters that work as in libpq.
const SUPPORTED: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "options",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "channel_binding",
    "client_encoding",
    "load_balance_hosts",
    "gssencmode",
];

/// libpq parameters egress-dump does not implement, and what they are for.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("sslcert", "client certificates"),
    ("sslkey", "client certificates"),
    ("sslpassword", "client certificates"),
    ("sslcertmode", "client certificates"),
    ("sslcrl", "certificate revocation lists"),
    ("sslcrldir", "certificate revocation lists"),
    ("sslsni", "turning TLS SNI off"),
    ("sslcompression", "TLS compression"),
    ("ssl_min_protocol_version", "TLS version limits"),
    ("ssl_max_protocol_version", "TLS version limits"),
    ("sslnegotiation", "direct TLS negotiation"),
    ("requirepeer", "peer checks on Unix sockets"),
    ("require_auth", "restricting authentication methods"),
    ("krbsrvname", "Kerberos"),
    ("gsslib", "GSSAPI"),
    ("gssdelegation", "GSSAPI"),
    ("service", "connection service files"),
    ("passfile", "password files"),
    ("replication", "replication connections"),
];

/// The `PG*` variables, by the parameter each one sets.
pub(super) const ENV: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGDATABASE", "dbname"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGAPPNAME", "application_name"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGOPTIONS", "options"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGCLIENTENCODING", "client_encoding"),
    ("PGLOADBALANCEHOSTS", "load_balance_hosts"),
    ("PGGSSENCMODE", "gssencmode"),
];

/// libpq's variables that set a session's defaults, by the setting each one sets. libpq
/// sends them at connection start after `options` (so they win over a `-c` of the same
/// setting), and skips the value `default`; egress-dump appends them to `options` as `-c`
/// switches, which the server reads in that same order. Ignoring them wrote a CSV day in
/// other date and time forms than `psql` prints with the same environment.
pub(super) const SESSION_ENV: &[(&str, &str)] = &[
    ("PGDATESTYLE", "datestyle"),
    ("PGTZ", "timezone"),
    ("PGGEQO", "geqo"),
];

/// Connection parameters by libpq name; where each came from is kept for messages.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, (String, Origin)>,
}

/// Where a parameter was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// In DATABASE_URL (a URL or a key=value string).
    ConnString,
    /// In a `PG*` variable.
    Env,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        let names: Vec<&String> = self.values.keys().collect();
        f.debug_struct("Params").field("set", &names).finish()
    }
}

impl Params {
    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|(v, _)| v.as_str())
    }

    /// Where `name` was set.
    pub fn origin(&self, name: &str) -> Option<Origin> {
        self.values.get(name).map(|(_, o)| *o)
    }

    /// `name` as the variable or parameter that set it, for messages.
    pub fn source(&self, name: &str) -> String {
        match self.origin(name) {
            Some(Origin::Env) => ENV
                .iter()
                .find(|(_, p)| *p == name)
                .map(|(v, _)| v.to_string())
                .unwrap_or_else(|| name.to_string()),
            _ => format!("{name} in DATABASE_URL"),
        }
    }

    fn set(&mut self, name: &str, value: String, origin: Origin) -> Result<(), ConfigError> {
        check_name(name, origin)?;
        self.values.insert(name.to_string(), (value, origin));
        Ok(())
    }

    /// The parameters of a connection string (URL or `key=value`), then the `PG*`
    /// variables `env` holds for whatever it leaves out.
    pub fn resolve(
        conninfo: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Params, ConfigError> {
        let mut params = match conninfo {
            Some(text) => parse(text)?,
            None => Params::default(),
        };
        for (var, name) in ENV {
            let value = env.iter().find(|(k, v)| k == var && !v.is_empty());
            if let (Some((_, value)), false) = (value, params.values.contains_key(*name)) {
                params.set(name, value.clone(), Origin::Env)?;
            }
        }
        params.add_session_defaults(env);
        Ok(params)
    }

    /// [`SESSION_ENV`]'s variables `env` holds, appended to `options` as `-c` switches.
    fn add_session_defaults(&mut self, env: &[(String, String)]) {
        let switches: Vec<String> = SESSION_ENV
            .iter()
            .filter_map(|(var, setting)| {
                let (_, value) = env.iter().find(|(k, v)| k == var && !v.is_empty())?;
                let value = value.trim();
                (!value.eq_ignore_ascii_case("default"))
                    .then(|| format!("-c {setting}={}", option_escaped(value)))
            })
            .collect();
        if switches.is_empty() {
            return;
        }
        let (options, origin) = match self.values.remove("options") {
            Some((options, origin)) => (format!("{options} {}", switches.join(" ")), origin),
            None => (switches.join(" "), Origin::Env),
        };
        self.values.insert("options".into(), (options, origin));
    }
}

/// `value` as one word of the server's `options`: spaces and backslashes escaped with a
/// backslash (`SQL, DMY` -> `SQL,\ DMY`).
fn option_escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '\\' || c.is_ascii_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn check_name(name: &str, origin: Origin) -> Result<(), ConfigError> {
    if SUPPORTED.contains(&name) {
        return Ok(());
    }
    let place = match origin {
        Origin::ConnString => "DATABASE_URL",
        Origin::Env => "the environment",
    };
    match UNSUPPORTED.iter().find(|(n, _)| *n == name) {
        Some((_, what)) => Err(ConfigError::new(format!(
            "connection parameter '{name}' ({what}) is not supported by egress-dump: remove it from {place}"
        ))),
        // A name from DATABASE_URL may be a piece of a password holding '&', '=' or a
        // space unencoded: not echoed.
        None if origin == Origin::ConnString => Err(ConfigError::new(
            "DATABASE_URL holds a connection option libpq does not know (its name is not shown: it may be part of a password); check the option names, and percent-encode '&', '=', '?' and spaces in a password (or quote it in key=value form)",
        )),
        None => Err(ConfigError::new(format!(
            "invalid connection option '{name}' in {place} (libpq would refuse it too)"
        ))),
    }
}

/// Parse a `postgresql://` / `postgres://` URL or a `key=value` string. Errors never echo
/// the text (it may hold a password).
pub(super) fn parse(text: &str) -> Result<Params, ConfigError> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("postgresql://") || lower.starts_with("postgres://") {
        parse_url(&text[text.find("://").unwrap_or(0) + 3..])
    } else {
        parse_keywords(text)
    }
}

fn bad_url(why: &str) -> ConfigError {
    ConfigError::new(format!(
        "DATABASE_URL is not a valid PostgreSQL connection string ({why}): use postgresql://user@host:port/dbname?param=value or key=value pairs (the value is not shown because it may contain a password)"
    ))
}

fn decode(part: &str) -> Result<String, ConfigError> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| bad_url("a percent-encoded part is not UTF-8"))
}

/// The user and password of a URL are taken first: everything before the last `@` of its
/// authority (which ends at the first `/`, `?` or `#`). An `@` in the database name after
/// that means a user or password holding one of those characters unencoded: the URL is
/// refused whole, its parts never echoed. An `@` in the query is a parameter's value
/// (`application_name=a@b`, as libpq takes it); a password's piece read as a query is
/// refused there without echo (an unknown name, or a pair without `=`).
fn split_userinfo(rest: &str) -> Result<(Option<&str>, &str), ConfigError> {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let after = &rest[authority_end..];
    let path = &after[..after.find('?').unwrap_or(after.len())];
    if path.contains('@') {
        // `u:p/w@db`, or `u:p@ss/w@db`: a '/', '?' or '#' inside the password moved the
        // host part's end; whatever follows would be read as host or database name.
        return Err(bad_url(
            "an '@' comes after the host part: a user name or password holding '/', '?', '#' or '@' must percent-encode them (%2F %3F %23 %40)",
        ));
    }
    match rest[..authority_end].rfind('@') {
        Some(at) => Ok((Some(&rest[..at]), &rest[at + 1..])),
        None => Ok((None, rest)),
    }
}

fn parse_url(rest: &str) -> Result<Params, ConfigError> {
    let mut params = Params::default();
    let (userinfo, rest) = split_userinfo(rest)?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (hosts, dbname) = main.split_once('/').unwrap_or((main, ""));
    let mut set = |name: &str, value: String| params.set(name, value, Origin::ConnString);
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo
            .split_once(':')
            .map_or((userinfo, None), |(u, p)| (u, Some(p)));
        if !user.is_empty() {
            set("user", decode(user)?)?;
        }
        if let Some(password) = password {
            set("password", decode(password)?)?;
        }
    }
    let (host_list, port_list) = split_hosts(hosts)?;
    if !host_list.is_empty() {
        set("host", host_list)?;
    }
    if !port_list.is_empty() {
        set("port", port_list)?;
    }
    if !dbname.is_empty() {
        set("dbname", decode(dbname)?)?;
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            bad_url(
                "a query parameter has no '=': a password holding '?' must percent-encode it (%3F)",
            )
        })?;
        let (key, value) = (decode(key)?, decode(value)?);
        // libpq takes the JDBC spelling `ssl=true` as sslmode=require.
        match (key.as_str(), value.as_str()) {
            ("ssl", "true") => set("sslmode", "require".into())?,
            _ => set(&key, value)?,
        }
    }
    Ok(params)
}

/// `h1:5432,[::1]:5433,%2Fvar%2Frun` -> ("h1,::1,/var/run", "5432,5433,").
fn split_hosts(spec: &str) -> Result<(String, String), ConfigError> {
    if spec.is_empty() {
        return Ok((String::new(), String::new()));
    }
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for one in spec.split(',') {
        let (host, port) = if let Some(inner) = one.strip_prefix('[') {
            let (h, after) = inner
                .split_once(']')
                .ok_or_else(|| bad_url("an IPv6 address lacks its ']'"))?;
            (
                h.to_string(),
                after.strip_prefix(':').unwrap_or("").to_string(),
            )
        } else {
            let (h, p) = one.rsplit_once(':').unwrap_or((one, ""));
            (decode(h)?, p.to_string())
        };
        hosts.push(host);
        ports.push(port);
    }
    let ports = if ports.iter().all(String::is_empty) {
        String::new()
    } else {
        ports.join(",")
    };
    Ok((hosts.join(","), ports))
}

/// `host=db port=5432 password='it''s' options='-c search_path=x'`, as libpq reads it.
fn parse_keywords(text: &str) -> Result<Params, ConfigError> {
    let mut params = Params::default();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(bad_url("a keyword has no '='"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let value = keyword_value(&mut chars)?;
        params.set(&key, value, Origin::ConnString)?;
    }
}

fn keyword_value(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<String, ConfigError> {
    let mut value = String::new();
    if chars.peek() == Some(&'\'') {
        chars.next();
        loop {
            match chars.next() {
                Some('\\') => value.push(
                    chars
                        .next()
                        .ok_or_else(|| bad_url("a value ends in a backslash"))?,
                ),
                Some('\'') => return Ok(value),
                Some(c) => value.push(c),
                None => return Err(bad_url("a quoted value is not closed")),
            }
        }
    }
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            break;
        }
        chars.next();
        if c == '\\' {
            value.push(
                chars
                    .next()
                    .ok_or_else(|| bad_url("a value ends in a backslash"))?,
            );
        } else {
            value.push(c);
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn urls_as_libpq_reads_them() {
        let p = parse("postgresql://me:p%40ss@db.example:6543/app?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x").unwrap();
        assert_eq!(p.get("user"), Some("me"));
        assert_eq!(p.get("password"), Some("p@ss"));
        assert_eq!(p.get("host"), Some("db.example"));
        assert_eq!(p.get("port"), Some("6543"));
        assert_eq!(p.get("dbname"), Some("app"));
        assert_eq!(p.get("sslmode"), Some("verify-full"));
        assert_eq!(p.get("sslrootcert"), Some("/ca.pem"));
        let p = parse("postgres://%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(p.get("host"), Some("/var/run/postgresql"));
        let p = parse("postgresql://a:1,[::1]:2/db?ssl=true").unwrap();
        assert_eq!((p.get("host"), p.get("port")), (Some("a,::1"), Some("1,2")));
        assert_eq!(p.get("sslmode"), Some("require"));
        assert_eq!(parse("postgresql://").unwrap(), Params::default());
    }

    #[test]
    fn keyword_strings_as_libpq_reads_them() {
        let p = parse(
            r"host=db port = 5432 password='it\'s a secret' options='-c search_path=x' dbname=a\ b",
        )
        .unwrap();
        assert_eq!(p.get("password"), Some("it's a secret"));
        assert_eq!(p.get("options"), Some("-c search_path=x"));
        assert_eq!(p.get("dbname"), Some("a b"));
        assert!(parse("host").is_err());
        assert!(parse("password='open").is_err());
    }

    #[test]
    fn unsupported_and_unknown_parameters_are_named_and_the_text_never_echoed() {
        let err = parse("postgresql://u:SeCrEt@h/d?sslcert=/c.pem")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'sslcert' (client certificates) is not supported"),
            "{err}"
        );
        assert!(!err.contains("SeCrEt"));
        let err = parse("host=h frobnicate=1").unwrap_err().to_string();
        assert!(
            err.contains("a connection option libpq does not know"),
            "{err}"
        );
        assert!(!err.contains("frobnicate"), "{err}");
        // `password=ab&cd=e` unencoded: 'cd' is a piece of the password.
        let err = parse("postgresql://u@h/d?password=ab&cd=e")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("cd"), "{err}");
        let err = Params::resolve(None, &env(&[("PGSSLCERTX", "x")])).map(|_| ());
        assert!(err.is_ok(), "unknown variables are not ours to judge");
        let err = parse("postgresql://u:SeCrEt@h:x/d?%zz=1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SeCrEt"), "{err}");
    }

    #[test]
    fn a_password_with_url_characters_is_never_echoed_in_part() {
        for url in [
            "postgresql://u:Pw1/x?y@db:5432/app",
            "postgresql://u:Pw1?x/y@db/app",
            "postgresql://u:Pw1#x@db/app",
            "postgresql://u:p@Pw1/x@db/app",
            "postgresql://u:p@Pw1#x@db/app",
            "postgresql://u:Pw1?x=y@db/app",
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains("percent-encode"), "{err}");
            for fragment in ["Pw1", "x/y", "x?y", "#x", "y@db"] {
                assert!(!err.contains(fragment), "{url}: {err}");
            }
        }
        // '@' in the password (the last '@' of the authority ends the userinfo).
        let p = parse("postgresql://u:p@ss@db:5432/app").unwrap();
        assert_eq!(
            (p.get("password"), p.get("host"), p.get("port")),
            (Some("p@ss"), Some("db"), Some("5432"))
        );
        // An '@' in a parameter's value is that value's, as libpq reads it.
        let p = parse("postgresql://u@db/app?application_name=a@b").unwrap();
        assert_eq!(p.get("application_name"), Some("a@b"));
        // Encoded, all of them work.
        let p = parse("postgresql://u:Pw1%2Fx%3Fy%40z@db/app").unwrap();
        assert_eq!(p.get("password"), Some("Pw1/x?y@z"));
    }

    #[test]
    fn the_connection_string_wins_over_the_environment() {
        let vars = env(&[
            ("PGSSLMODE", "require"),
            ("PGHOST", "envhost"),
            ("PGUSER", "envuser"),
            ("PGPORT", ""),
        ]);
        let p = Params::resolve(Some("postgresql://urluser@/db?sslmode=disable"), &vars).unwrap();
        assert_eq!(
            p.get("sslmode"),
            Some("disable"),
            "sslmode=disable is honoured"
        );
        assert_eq!(p.get("user"), Some("urluser"));
        assert_eq!(
            p.get("host"),
            Some("envhost"),
            "the environment fills the rest"
        );
        assert_eq!(p.get("port"), None, "an empty variable counts as unset");
        assert_eq!(p.source("host"), "PGHOST");
        assert_eq!(p.source("sslmode"), "sslmode in DATABASE_URL");
    }

    #[test]
    fn session_defaults_from_the_environment_follow_options_as_libpq_sends_them() {
        let vars = env(&[
            ("PGOPTIONS", "-c search_path=x"),
            ("PGDATESTYLE", "SQL, DMY"),
            ("PGTZ", "Asia/Kolkata"),
            ("PGGEQO", "default"),
        ]);
        let p = Params::resolve(None, &vars).unwrap();
        assert_eq!(
            p.get("options"),
            Some(r"-c search_path=x -c datestyle=SQL,\ DMY -c timezone=Asia/Kolkata")
        );
        let p = Params::resolve(Some("host=db"), &env(&[("PGTZ", r"a\b c")])).unwrap();
        assert_eq!(p.get("options"), Some(r"-c timezone=a\\b\ c"));
        assert_eq!(p.source("options"), "PGOPTIONS");
        let p = Params::resolve(None, &env(&[("PGGEQO", "DEFAULT")])).unwrap();
        assert_eq!(p.get("options"), None, "`default` is not sent, as in libpq");
    }
}
