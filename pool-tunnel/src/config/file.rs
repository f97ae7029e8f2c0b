//! The configuration file (TOML): `tunnel server --config FILE`, `tunnel client
//! --config FILE`, `tunnel check FILE`, and the settings the command line's flags
//! fill in the same shape (one service, named `default`).
//!
//! ```toml
//! [server]
//! tunnel = "0.0.0.0:10101"
//!
//! [server.services.web]
//! public = "0.0.0.0:8080"
//!
//! [client]
//! tunnel = "server.example:10101"
//!
//! [client.services.web]
//! target = "127.0.0.1:8000"
//! proxy_protocol = "v2"
//! ```
//!
//! Every mistake is named with its line, column and field, all of them at once: each
//! section and each service is read on its own, and a field that fails is set aside
//! so that the fields after it are read too. An unknown field is a mistake.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use pool_tls::TlsMode;
use serde::{Deserialize, Deserializer};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::config::{check_name, check_proxy_protocol, ProxyProtocol, ServiceProtocol};
use crate::limits::{COUNT_LIMIT, SECS_LIMIT};
use crate::transport::Transport;

/// A TLS mode written `1` or `"1"` (or a name `TlsMode` reads).
fn tls_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TlsMode>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Str(String),
    }
    let s = match Raw::deserialize(d)? {
        Raw::Int(i) => i.to_string(),
        Raw::Str(s) => s,
    };
    s.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{e}")))
}

/// The server side's settings beside its services (`[server]`, or the flags).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSettings {
    pub(crate) tunnel: Option<SocketAddr>,
    pub(crate) transport: Option<Transport>,
    pub(crate) control: Option<SocketAddr>,
    #[serde(default, deserialize_with = "tls_mode")]
    pub(crate) tls: Option<TlsMode>,
    pub(crate) insecure_plaintext: Option<bool>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) hostname: Option<String>,
    pub(crate) client_ip: Option<String>,
    pub(crate) max: Option<u64>,
    pub(crate) max_candidates: Option<u64>,
    pub(crate) max_candidates_per_source: Option<u64>,
    pub(crate) tunnel_key_file: Option<PathBuf>,
}

/// One service of the server side (`[server.services.NAME]`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerServiceSettings {
    #[serde(skip)]
    pub(crate) name: String,
    pub(crate) public: Option<SocketAddr>,
    pub(crate) protocol: Option<ServiceProtocol>,
    pub(crate) max_sessions: Option<u64>,
    pub(crate) max_sessions_per_source: Option<u64>,
    pub(crate) new_sessions_per_source: Option<u64>,
    pub(crate) idle_timeout: Option<u64>,
    pub(crate) half_close_timeout: Option<u64>,
}

/// The client side's settings beside its services (`[client]`, or the flags).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientSettings {
    pub(crate) tunnel: Option<String>,
    pub(crate) transport: Option<Transport>,
    pub(crate) control: Option<String>,
    #[serde(default, deserialize_with = "tls_mode")]
    pub(crate) tls: Option<TlsMode>,
    pub(crate) insecure_plaintext: Option<bool>,
    pub(crate) hostname: Option<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) pin: Option<String>,
    pub(crate) min: Option<u64>,
    pub(crate) max: Option<u64>,
    pub(crate) tunnel_key_file: Option<PathBuf>,
}

/// One service of the client side (`[client.services.NAME]`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientServiceSettings {
    #[serde(skip)]
    pub(crate) name: String,
    pub(crate) target: Option<String>,
    pub(crate) protocol: Option<ServiceProtocol>,
    pub(crate) proxy_protocol: Option<ProxyProtocol>,
    pub(crate) idle_timeout: Option<u64>,
    pub(crate) half_close_timeout: Option<u64>,
}

/// A side as a file (or the flags) gives it: its settings and its services.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Side<S, V> {
    pub(crate) settings: S,
    pub(crate) services: Vec<V>,
}

/// The server side's settings and services.
pub(crate) type ServerFile = Side<ServerSettings, ServerServiceSettings>;
/// The client side's settings and services.
pub(crate) type ClientFile = Side<ClientSettings, ClientServiceSettings>;

/// A configuration file: either side, or both.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FileConfig {
    pub(crate) server: Option<ServerFile>,
    pub(crate) client: Option<ClientFile>,
}

/// A problem with one setting, found by a check that both the file and the flags run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The field, as written in the file (`max_sessions`).
    pub(crate) field: &'static str,
    pub(crate) message: String,
}

fn problem(field: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        field,
        message: message.into(),
    }
}

fn count(out: &mut Vec<Problem>, field: &'static str, v: Option<u64>) {
    if let Some(v) = v {
        if v == 0 || v > COUNT_LIMIT {
            out.push(problem(field, format!("{v}: must be 1 to {COUNT_LIMIT}")));
        }
    }
}

fn secs(out: &mut Vec<Problem>, field: &'static str, v: Option<u64>) {
    if let Some(v) = v {
        if v == 0 || v > SECS_LIMIT {
            out.push(problem(
                field,
                format!("{v}: must be 1 to {SECS_LIMIT} seconds"),
            ));
        }
    }
}

fn plaintext(out: &mut Vec<Problem>, tls: Option<TlsMode>, allowed: Option<bool>) {
    if tls == Some(TlsMode::Off) && allowed != Some(true) {
        out.push(problem(
            "tls",
            "0 sends the session control in clear, so anyone on the path can take a \
             user's session: use 1 (the default), or say insecure_plaintext \
             (--insecure-plaintext)",
        ));
    }
}

impl ServerSettings {
    /// What is wrong with these settings, field by field.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.tunnel.is_none() {
            out.push(problem(
                "tunnel",
                "missing: the address the pool listens on",
            ));
        }
        plaintext(&mut out, self.tls, self.insecure_plaintext);
        match (
            self.tls.unwrap_or(TlsMode::SelfSigned),
            &self.cert,
            &self.key,
        ) {
            (TlsMode::Off, Some(_), _) => out.push(problem("cert", "needs tls 1 or 2")),
            (TlsMode::Verified, None, _) | (TlsMode::Verified, _, None) => {
                out.push(problem("tls", "2 needs cert and key"))
            }
            (_, Some(_), None) => out.push(problem("cert", "needs key")),
            (_, None, Some(_)) => out.push(problem("key", "needs cert")),
            _ => {}
        }
        count(&mut out, "max", self.max);
        count(&mut out, "max_candidates", self.max_candidates);
        count(
            &mut out,
            "max_candidates_per_source",
            self.max_candidates_per_source,
        );
        out
    }
}

impl ServerServiceSettings {
    /// What is wrong with this service, field by field.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.public.is_none() {
            out.push(problem("public", "missing: the address users connect to"));
        }
        count(&mut out, "max_sessions", self.max_sessions);
        count(
            &mut out,
            "max_sessions_per_source",
            self.max_sessions_per_source,
        );
        count(
            &mut out,
            "new_sessions_per_source",
            self.new_sessions_per_source,
        );
        secs(&mut out, "idle_timeout", self.idle_timeout);
        secs(&mut out, "half_close_timeout", self.half_close_timeout);
        out
    }
}

impl ClientSettings {
    /// What is wrong with these settings, field by field.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        match &self.tunnel {
            None => out.push(problem("tunnel", "missing: the server's tunnel address")),
            Some(t) => {
                if let Err(e) = crate::protocol::split_host_port(t) {
                    out.push(problem("tunnel", e.to_string()));
                }
            }
        }
        if let Some(c) = &self.control {
            if let Err(e) = crate::protocol::split_host_port(c) {
                out.push(problem("control", e.to_string()));
            }
        }
        let tls = self.tls.unwrap_or(TlsMode::SelfSigned);
        plaintext(&mut out, self.tls, self.insecure_plaintext);
        if self.ca.is_some() && tls != TlsMode::Verified {
            out.push(problem("ca", "needs tls 2"));
        }
        if let Some(pin) = &self.pin {
            if tls != TlsMode::SelfSigned {
                out.push(problem("pin", "needs tls 1"));
            } else if let Err(e) = pin.parse::<pool_tls::Fingerprint>() {
                out.push(problem("pin", e.to_string()));
            }
        }
        count(&mut out, "min", self.min);
        count(&mut out, "max", self.max);
        let (min, max) = (
            self.min.unwrap_or(crate::config::CLIENT_MIN as u64),
            self.max.unwrap_or(crate::config::CLIENT_MAX as u64),
        );
        if min > max {
            out.push(problem("min", format!("{min} is above max {max}")));
        }
        out
    }
}

impl ClientServiceSettings {
    /// What is wrong with this service, field by field.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        match &self.target {
            None => out.push(problem("target", "missing: the service's HOST:PORT")),
            Some(t) => {
                if let Err(e) = crate::protocol::split_host_port(t) {
                    out.push(problem("target", e.to_string()));
                }
            }
        }
        if let Err(e) = check_proxy_protocol(self.protocol.unwrap_or_default(), self.proxy_protocol)
        {
            out.push(problem("proxy_protocol", e));
        }
        secs(&mut out, "idle_timeout", self.idle_timeout);
        secs(&mut out, "half_close_timeout", self.half_close_timeout);
        out
    }
}

/// One mistake in a file: where, which field, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mistake {
    pub(crate) line: usize,
    pub(crate) column: usize,
    /// The field's path (`server.services.web.max_sessions`).
    pub(crate) field: String,
    pub(crate) message: String,
}

impl std::fmt::Display for Mistake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}: {}",
            self.line, self.column, self.field, self.message
        )
    }
}

/// Every mistake of a file, in the order of its lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mistakes(pub(crate) Vec<Mistake>);

impl std::fmt::Display for Mistakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        write!(f, "{n} mistake{}", if n == 1 { "" } else { "s" })?;
        for m in &self.0 {
            write!(f, "\n  {m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Mistakes {}

/// Line and column (from 1) of byte `at` of `src`.
fn position(src: &str, at: usize) -> (usize, usize) {
    let before = &src[..at.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// Collects mistakes with their positions.
struct Reader<'s> {
    src: &'s str,
    mistakes: Vec<Mistake>,
}

impl Reader<'_> {
    fn push(&mut self, span: Range<usize>, field: String, message: impl Into<String>) {
        let (line, column) = position(self.src, span.start);
        self.mistakes.push(Mistake {
            line,
            column,
            field,
            message: message.into(),
        });
    }

    /// Reads `table` (at `span`, named `path`) as a `T`. A field that fails is
    /// reported and set aside, and the rest read again, until none fails: every
    /// mistake is named, not only the first. Then `problems` checks the whole, and
    /// each problem is placed at its field (else at the table).
    fn read<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        path: &str,
        span: Range<usize>,
        mut table: DeTable<'_>,
        problems: impl Fn(&T) -> Vec<Problem>,
    ) -> T {
        let whole = table.clone();
        let mut failed = Vec::new();
        let value = loop {
            let de =
                ValueDeserializer::from(Spanned::new(span.clone(), DeValue::Table(table.clone())));
            match T::deserialize(de) {
                Ok(v) => break v,
                Err(e) => {
                    let at = e.span().unwrap_or(span.clone());
                    // The field whose key or value holds the error.
                    let key = table
                        .iter()
                        .find(|(k, v)| {
                            let (k, v) = (k.span(), v.span());
                            (k.start <= at.start && at.start < k.end.max(k.start + 1))
                                || (v.start <= at.start && at.end <= v.end.max(v.start + 1))
                        })
                        .map(|(k, _)| k.get_ref().to_string());
                    let field = match &key {
                        Some(k) => format!("{path}.{k}"),
                        None => path.to_owned(),
                    };
                    self.push(at, field, e.message().to_owned());
                    match key {
                        Some(k) => {
                            table.remove(k.as_str());
                            failed.push(k);
                        }
                        None => break T::default(),
                    }
                }
            }
        };
        for p in problems(&value) {
            if failed.iter().any(|f| f == p.field) {
                continue; // already named
            }
            let at = whole.get(p.field).map(|v| v.span()).unwrap_or(span.clone());
            self.push(at, format!("{path}.{}", p.field), p.message);
        }
        value
    }

    /// Reads a side's section: its settings, then each of its services.
    fn side<S, V>(
        &mut self,
        name: &str,
        section: Spanned<DeValue<'_>>,
        settings: impl Fn(&S) -> Vec<Problem>,
        service: impl Fn(&V) -> Vec<Problem>,
        named: impl Fn(&mut V, String),
    ) -> Side<S, V>
    where
        S: for<'de> Deserialize<'de> + Default,
        V: for<'de> Deserialize<'de> + Default,
    {
        let span = section.span();
        let DeValue::Table(mut table) = section.into_inner() else {
            self.push(span, name.to_owned(), "must be a table");
            return Side {
                settings: S::default(),
                services: Vec::new(),
            };
        };
        let services = table.remove("services");
        let settings = self.read(name, span, table, settings);
        let mut out = Vec::new();
        if let Some(services) = services {
            let sspan = services.span();
            match services.into_inner() {
                DeValue::Table(t) => {
                    for (k, v) in t {
                        let path = format!("{name}.services.{}", k.get_ref());
                        if let Err(e) = check_name(k.get_ref()) {
                            self.push(k.span(), path.clone(), e);
                        }
                        let vspan = v.span();
                        let DeValue::Table(vt) = v.into_inner() else {
                            self.push(vspan, path, "must be a table");
                            continue;
                        };
                        let mut svc: V = self.read(&path, vspan, vt, &service);
                        named(&mut svc, k.get_ref().to_string());
                        out.push(svc);
                    }
                }
                _ => self.push(
                    sspan,
                    format!("{name}.services"),
                    "must be a table of services by name",
                ),
            }
        }
        Side {
            settings,
            services: out,
        }
    }
}

/// Reads a configuration file's text: both sides, whichever it has, with every
/// mistake named by line, column and field.
pub(crate) fn parse(src: &str) -> Result<FileConfig, Mistakes> {
    let mut r = Reader {
        src,
        mistakes: Vec::new(),
    };
    let (root, errors) = DeTable::parse_recoverable(src);
    for e in errors {
        r.push(e.span().unwrap_or(0..0), "(syntax)".into(), e.message());
    }
    if !r.mistakes.is_empty() {
        return Err(Mistakes(r.mistakes));
    }
    let mut root = root.into_inner();
    let mut out = FileConfig::default();
    if let Some(s) = root.remove("server") {
        let side = r.side(
            "server",
            s,
            ServerSettings::problems,
            ServerServiceSettings::problems,
            |v, n| v.name = n,
        );
        // Two services on one address cannot both listen.
        let mut seen = std::collections::HashMap::new();
        for svc in &side.services {
            if let Some(a) = svc.public.filter(|a| a.port() != 0) {
                if let Some(other) = seen.insert(a, svc.name.clone()) {
                    r.push(
                        0..0,
                        format!("server.services.{}.public", svc.name),
                        format!("{a} is also service {other}'s"),
                    );
                }
            }
        }
        out.server = Some(side);
    }
    if let Some(c) = root.remove("client") {
        out.client = Some(r.side(
            "client",
            c,
            ClientSettings::problems,
            ClientServiceSettings::problems,
            |v, n| v.name = n,
        ));
    }
    if let (Some(srv), Some(cl)) = (&out.server, &out.client) {
        let (a, b) = (
            srv.settings.transport.unwrap_or_default(),
            cl.settings.transport.unwrap_or_default(),
        );
        if a != b {
            r.push(
                0..0,
                "client.transport".into(),
                format!(
                    "the server runs over {a}, the client over {b}: both sides of a pair \
                     take the same transport"
                ),
            );
        }
    }
    for (k, v) in root.iter() {
        r.push(
            k.span().start..v.span().end,
            k.get_ref().to_string(),
            "unknown section: expected `server` or `client`",
        );
    }
    if out.server.is_none() && out.client.is_none() && r.mistakes.is_empty() {
        r.push(
            0..0,
            "(file)".into(),
            "neither a [server] nor a [client] section",
        );
    }
    if r.mistakes.is_empty() {
        Ok(out)
    } else {
        r.mistakes.sort_by_key(|m| (m.line, m.column));
        Err(Mistakes(r.mistakes))
    }
}

/// Reads the configuration file at `path`; the error names the file.
pub(crate) fn read(path: &Path) -> Result<FileConfig, crate::BoxError> {
    let src = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&src).map_err(|m| format!("{}: {m}", path.display()).into())
}

#[cfg(test)]
mod tests;
