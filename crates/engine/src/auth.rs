//! Bearer-token authentication and per-source authorization
//! (`[server.auth]`), and the start-up check of how exposed the server is.
//!
//! When tokens are configured, `Ingest.Stream` and `Admin.Stats` require
//! `authorization: Bearer <token>` metadata: none, a malformed one or an
//! unknown token is `UNAUTHENTICATED`. The token's source patterns are then
//! checked against `Open.source_id`: a source it does not cover is
//! `PERMISSION_DENIED`, naming the source id (never the token). Tokens are
//! compared in constant time. Health and reflection need no token. A
//! token's secret may sit in the configuration (`token`), an environment
//! variable (`token_env`) or a file (`token_file`); the config crate resolves
//! it ([`TokenSpec::secret`](sluice_config::TokenSpec::secret)).

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_config::{AuthSettings, ServerSettings};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// What a presented token may do: the source patterns of its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    patterns: Vec<String>,
}

impl Grant {
    /// A grant for `patterns` (exact ids, `prefix*`, or `*`).
    pub fn new(patterns: Vec<String>) -> Self {
        Self { patterns }
    }

    /// Whether the grant covers `source_id`.
    pub fn covers(&self, source_id: &str) -> bool {
        self.patterns.iter().any(|p| pattern_matches(p, source_id))
    }

    /// `PERMISSION_DENIED` unless the grant covers `source_id`.
    pub fn check(&self, source_id: &str) -> Result<(), Status> {
        if self.covers(source_id) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "the token presented may not open source {source_id:?}"
            )))
        }
    }
}

/// Whether source pattern `pattern` covers `source_id`: `*` covers every
/// id, `prefix*` every id starting with `prefix`, anything else only itself.
pub fn pattern_matches(pattern: &str, source_id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => source_id.starts_with(prefix),
        None => pattern == source_id,
    }
}

/// Compares two byte strings in time that depends only on their lengths,
/// not on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The configured tokens, checked against request metadata.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<Vec<(Vec<u8>, Grant)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Authenticator {
    /// `None` when `[server.auth]` lists no token (authentication off).
    ///
    /// Each token's secret is resolved here ([`TokenSpec::secret`]: inline,
    /// `token_env` or `token_file`). Validation has already refused
    /// unresolvable or empty tokens; should one fail anyway (a variable
    /// unset or a file removed since), it is left out with an error log and
    /// never accepted: authentication stays on (fails closed).
    ///
    /// [`TokenSpec::secret`]: sluice_config::TokenSpec::secret
    pub fn from_settings(auth: &AuthSettings) -> Option<Self> {
        auth.enabled().then(|| Self {
            tokens: Arc::new(
                auth.tokens
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| match t.secret() {
                        Ok(secret) if !secret.is_empty() => {
                            Some((secret.into_bytes(), Grant::new(t.sources.clone())))
                        }
                        Ok(_) => {
                            tracing::error!("server.auth.tokens[{i}]: empty token, not accepted");
                            None
                        }
                        Err(e) => {
                            tracing::error!("server.auth.tokens[{i}]: {e}; token not accepted");
                            None
                        }
                    })
                    .collect(),
            ),
        })
    }

    /// The grant of the bearer token in `metadata`, or `UNAUTHENTICATED`.
    /// Every configured token is compared (in constant time), so the time
    /// taken does not tell which one nearly matched.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Grant, Status> {
        let value = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let value = value
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization metadata"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be `Bearer <token>`")
            })?;
        let mut found = None;
        for (known, grant) in self.tokens.iter() {
            if constant_time_eq(known, token.as_bytes()) && found.is_none() {
                found = Some(grant);
            }
        }
        found
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))
    }
}

/// Checks a request against `auth` (none: everything allowed).
pub(crate) fn check(
    auth: Option<&Authenticator>,
    metadata: &MetadataMap,
) -> Result<Option<Grant>, Status> {
    auth.map(|a| a.authenticate(metadata)).transpose()
}

/// What is missing for a server listening on `listen` to be safely exposed:
/// nothing when it is bound to a loopback address; else "TLS" and/or
/// "authentication tokens" when they are not configured. `sluice serve`
/// logs a warning naming them.
pub fn exposure_warning(listen: SocketAddr, tls: bool, auth: bool) -> Option<String> {
    if listen.ip().is_loopback() {
        return None;
    }
    let missing: Vec<&str> = [
        (!tls).then_some("TLS ([server.tls] cert and key)"),
        (!auth).then_some("authentication tokens ([server.auth] tokens)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "listening on non-loopback address {listen} without {}: anyone who can reach it can {}",
        missing.join(" and without "),
        match (tls, auth) {
            (false, false) => "read and send records",
            (false, true) => "read records and credentials in transit",
            _ => "send records as any source",
        }
    ))
}

/// [`exposure_warning`] for `server` settings.
pub(crate) fn server_exposure_warning(server: &ServerSettings) -> Option<String> {
    exposure_warning(server.listen, server.tls.is_some(), server.auth.enabled())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("web-*", "web-1"));
        assert!(pattern_matches("web-*", "web-"));
        assert!(!pattern_matches("web-*", "web"));
        assert!(pattern_matches("a", "a"));
        assert!(!pattern_matches("a", "ab"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn warning_decision() {
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert_eq!(exposure_warning(local, false, false), None);
        assert_eq!(exposure_warning(any, true, true), None);
        let w = exposure_warning(any, false, true).unwrap();
        assert!(w.contains("TLS") && !w.contains("tokens"), "{w}");
        let w = exposure_warning(any, true, false).unwrap();
        assert!(!w.contains("TLS") && w.contains("tokens"), "{w}");
        let w = exposure_warning(any, false, false).unwrap();
        assert!(w.contains("TLS") && w.contains("tokens"), "{w}");
    }
}
