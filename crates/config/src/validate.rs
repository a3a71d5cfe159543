//! Semantic checks of a [`Settings`]: every problem is collected, none stops
//! the others from being found.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use sluice_buffer::FieldErrors;

use crate::Settings;
use crate::pipeline::{PipelineSpec, SinkSpec, TransformSpec};

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the offending key, as written in a file: `buffer.low_watermark`,
    /// `pipelines[0].stages[1].name`.
    pub key: String,
    /// The whole sentence, beginning with the key and naming the rule, e.g.
    /// `buffer.low_watermark (0.9) must be below buffer.high_watermark (0.8)`.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration; displayed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    errors: Vec<ValidationError>,
}

impl ValidationErrors {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem. `message` should begin with `key`.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let (key, message) = (key.into(), message.into());
        debug_assert!(
            message.starts_with(&key),
            "{message:?} should begin with {key:?}"
        );
        self.errors.push(ValidationError { key, message });
    }

    /// The problems, in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, ValidationError> {
        self.errors.iter()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// True when there is no problem.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Whether some problem is about `key`.
    pub fn has_key(&self, key: &str) -> bool {
        self.errors.iter().any(|e| e.key == key)
    }

    /// `Ok(())` when empty, else `Err(self)`.
    pub fn into_result(self) -> Result<(), Self> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl IntoIterator for ValidationErrors {
    type Item = ValidationError;
    type IntoIter = std::vec::IntoIter<ValidationError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Runs every rule on `s`.
pub(crate) fn validate(s: &Settings) -> ValidationErrors {
    let mut e = ValidationErrors::new();
    server(s, &mut e);
    buffer(s, &mut e);
    memory(s, &mut e);
    retry(s, &mut e);
    if s.log.filter.trim().is_empty() {
        e.push("log.filter", "log.filter must not be empty (e.g. \"info\")");
    }
    pipelines(s, &mut e);
    e
}

fn positive(e: &mut ValidationErrors, key: &str, value: u64) {
    if value == 0 {
        e.push(key, format!("{key} must be greater than 0"));
    }
}

fn server(s: &Settings, e: &mut ValidationErrors) {
    let sv = &s.server;
    positive(e, "server.max_message_bytes", sv.max_message_bytes as u64);
    if sv.keepalive_interval.is_zero() {
        e.push(
            "server.keepalive_interval",
            "server.keepalive_interval must be greater than 0s",
        );
    }
    if sv.keepalive_timeout.is_zero() {
        e.push(
            "server.keepalive_timeout",
            "server.keepalive_timeout must be greater than 0s",
        );
    }
    if sv.open_timeout.is_zero() {
        e.push(
            "server.open_timeout",
            "server.open_timeout must be greater than 0s",
        );
    }
    positive(
        e,
        "server.max_sessions_per_connection",
        u64::from(sv.max_sessions_per_connection),
    );
    positive(
        e,
        "server.max_unacked_per_session",
        sv.max_unacked_per_session,
    );
    positive(e, "server.max_connections", u64::from(sv.max_connections));
    if let Some(n) = sv.uncovered_message_bytes {
        positive(e, "server.uncovered_message_bytes", n as u64);
    }
    if sv.message_timeout.is_zero() {
        e.push(
            "server.message_timeout",
            "server.message_timeout must be greater than 0s",
        );
    }
    for (key, value) in [
        ("server.http2_stream_window", sv.http2_stream_window),
        ("server.http2_connection_window", sv.http2_connection_window),
    ] {
        // RFC 9113 §6.9.2: a window is at most 2^31 − 1; below the
        // protocol's initial 65 535 a window only slows every stream.
        if !(65_535..=0x7fff_ffff).contains(&value) {
            e.push(
                key,
                format!("{key} must be between 65535 and 2147483647 bytes, got {value}"),
            );
        }
    }
    auth(s, e);
    if let Some(tls) = &sv.tls {
        for (key, path) in [
            ("server.tls.cert", Some(&tls.cert)),
            ("server.tls.key", Some(&tls.key)),
            ("server.tls.client_ca", tls.client_ca.as_ref()),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                e.push(key, format!("{key} must not be empty (a PEM file)"));
            }
        }
    }
    if s.metrics.enabled && s.metrics.listen == sv.listen && sv.listen.port() != 0 {
        e.push(
            "metrics.listen",
            format!(
                "metrics.listen ({}) must differ from server.listen ({})",
                s.metrics.listen, sv.listen
            ),
        );
    }
}

/// `[server.auth]`: each token given exactly one way and resolvable
/// (variable set, file readable), non-empty and unique (messages never quote
/// a token), each with at least one well-formed source pattern.
fn auth(s: &Settings, e: &mut ValidationErrors) {
    // secret -> (index, field) of the first token with it.
    let mut seen: HashMap<String, (usize, &str)> = HashMap::new();
    for (i, t) in s.server.auth.tokens.iter().enumerate() {
        let key = format!("server.auth.tokens[{i}]");
        let field = t.secret_field();
        let tkey = format!("{key}.{field}");
        match t.secret() {
            Err(err) => {
                let ekey = match err.field() {
                    Some(f) => format!("{key}.{f}"),
                    None => key.clone(),
                };
                e.push(ekey.clone(), format!("{ekey}: {err}"));
            }
            Ok(secret) if secret.trim().is_empty() => {
                e.push(tkey.clone(), format!("{tkey} must not be empty"));
            }
            Ok(secret) if secret.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                e.push(
                    tkey.clone(),
                    format!("{tkey} must not contain whitespace or control characters"),
                );
            }
            Ok(secret) => {
                if let Some((first, first_field)) = seen.get(&secret) {
                    e.push(
                        tkey.clone(),
                        format!(
                            "{tkey} is the same as server.auth.tokens[{first}].{first_field}; tokens must be unique"
                        ),
                    );
                } else {
                    seen.insert(secret, (i, field));
                }
            }
        }
        let skey = format!("{key}.sources");
        if t.sources.is_empty() {
            e.push(
                skey.clone(),
                format!(
                    "{skey} must name at least one source (an id, a prefix ending in *, or \"*\")"
                ),
            );
        }
        for (k, p) in t.sources.iter().enumerate() {
            let pkey = format!("{skey}[{k}]");
            if p.is_empty() {
                e.push(pkey.clone(), format!("{pkey} must not be empty"));
            } else if p.find('*').is_some_and(|at| at != p.len() - 1) {
                e.push(
                    pkey.clone(),
                    format!("{pkey} ({p:?}) may hold * only as its last character"),
                );
            }
        }
    }
}

/// Records the buffer crate's verdict on one of its types: each field error
/// under the key `key(field)`, the message naming every field by its key.
/// The rules themselves live in `sluice-buffer` (`Limits::validate` and the
/// like), which its constructors also apply, so the two never disagree.
fn buffer_rules(
    e: &mut ValidationErrors,
    result: Result<(), FieldErrors>,
    key: impl Fn(&str) -> String,
) {
    for err in result.err().into_iter().flatten() {
        e.push(key(err.field), err.message_with(&key));
    }
}

fn buffer(s: &Settings, e: &mut ValidationErrors) {
    let b = &s.buffer;
    // Limits: `global.records` is `buffer.global.records`.
    buffer_rules(e, b.limits().validate(), |f| format!("buffer.{f}"));
    positive(e, "buffer.credit_window_records", b.credit_window_records);
    positive(
        e,
        "buffer.guaranteed_credit_records",
        b.guaranteed_credit_records,
    );
    if b.credit_lease.is_zero() {
        e.push(
            "buffer.credit_lease",
            "must be at least 1 ms (how long floating credit may stay unused)",
        );
    }
    // Watermarks: `low` is `buffer.low_watermark`.
    buffer_rules(e, b.watermarks().validate(), |f| {
        format!("buffer.{f}_watermark")
    });
}

fn memory(s: &Settings, e: &mut ValidationErrors) {
    buffer_rules(e, s.memory.validate(), |f| format!("memory.{f}"));
}

fn retry(s: &Settings, e: &mut ValidationErrors) {
    buffer_rules(e, s.retry.validate(), |f| format!("retry.{f}"));
}

fn pipelines(s: &Settings, e: &mut ValidationErrors) {
    if s.pipelines.is_empty() {
        e.push("pipelines", "pipelines must contain at least one pipeline");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    // (dir, prefix) of every file sink -> the key that first uses it.
    let mut files: HashMap<(&Path, &str), String> = HashMap::new();
    for (i, p) in s.pipelines.iter().enumerate() {
        let key = format!("pipelines[{i}]");
        pipeline(&key, p, e);
        if !p.name.is_empty() {
            if let Some(first) = names.get(p.name.as_str()) {
                e.push(
                    format!("{key}.name"),
                    format!(
                        "{key}.name {:?} is already the name of pipelines[{first}]; pipeline names must be unique",
                        p.name
                    ),
                );
            } else {
                names.insert(&p.name, i);
            }
        }
        for (field, sink) in [("sink", &p.sink), ("dead_letter", &p.dead_letter)] {
            if let SinkSpec::File { dir, prefix, .. } = sink {
                let here = format!("{key}.{field}");
                if let Some(first) = files.get(&(dir.as_path(), prefix.as_str())) {
                    e.push(
                        here.clone(),
                        format!(
                            "{here} writes the same files as {first} (dir {:?}, prefix {prefix:?}); give each file sink its own dir or prefix",
                            dir.display().to_string()
                        ),
                    );
                } else {
                    files.insert((dir.as_path(), prefix.as_str()), here);
                }
            }
        }
    }
}

fn pipeline(key: &str, p: &PipelineSpec, e: &mut ValidationErrors) {
    if p.name.trim().is_empty() {
        e.push(
            format!("{key}.name"),
            format!("{key}.name must not be empty"),
        );
    }
    let mut stage_names: HashMap<&str, usize> = HashMap::new();
    for (j, stage) in p.stages.iter().enumerate() {
        let skey = format!("{key}.stages[{j}]");
        if stage.name.trim().is_empty() {
            e.push(
                format!("{skey}.name"),
                format!("{skey}.name must not be empty"),
            );
        } else if let Some(first) = stage_names.get(stage.name.as_str()) {
            e.push(
                format!("{skey}.name"),
                format!(
                    "{skey}.name {:?} is already the name of {key}.stages[{first}]; stage names must be unique within a pipeline",
                    stage.name
                ),
            );
        } else {
            stage_names.insert(&stage.name, j);
        }
        transform(&format!("{skey}.transform"), &stage.transform, e);
    }
    sink(&format!("{key}.sink"), &p.sink, e);
    sink(&format!("{key}.dead_letter"), &p.dead_letter, e);
    if let SinkSpec::Postgres(_) = p.dead_letter {
        // Why: a dead letter carries what a row of the table has no column
        // for (its error, stage, retries); the file sink keeps all of it.
        e.push(
            format!("{key}.dead_letter.kind"),
            format!(
                "{key}.dead_letter.kind \"postgres\" is not supported for dead letters (use \"file\")"
            ),
        );
    }
    positive(
        e,
        &format!("{key}.batch.max_records"),
        p.batch.max_records as u64,
    );
    positive(
        e,
        &format!("{key}.batch.max_bytes"),
        p.batch.max_bytes as u64,
    );
}

fn non_empty(e: &mut ValidationErrors, key: String, value: &str) {
    if value.trim().is_empty() {
        e.push(key.clone(), format!("{key} must not be empty"));
    }
}

fn fraction(e: &mut ValidationErrors, key: String, value: f64) {
    if !(0.0..=1.0).contains(&value) {
        e.push(key.clone(), format!("{key} ({value}) must be in [0, 1]"));
    }
}

fn transform(key: &str, t: &TransformSpec, e: &mut ValidationErrors) {
    match t {
        TransformSpec::Filter { field, op, value } => {
            non_empty(e, format!("{key}.field"), field);
            let op_name = serde_json::to_value(op)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match (op.takes_value(), value) {
                (true, None) => e.push(
                    format!("{key}.value"),
                    format!("{key}.value is required by op \"{op_name}\""),
                ),
                (false, Some(_)) => e.push(
                    format!("{key}.value"),
                    format!("{key}.value must be omitted with op \"{op_name}\""),
                ),
                _ => {}
            }
        }
        TransformSpec::Set { field, .. } => non_empty(e, format!("{key}.field"), field),
        TransformSpec::Rename { from, to } => {
            non_empty(e, format!("{key}.from"), from);
            non_empty(e, format!("{key}.to"), to);
            if !from.is_empty() && from == to {
                e.push(
                    format!("{key}.to"),
                    format!("{key}.to ({to:?}) must differ from {key}.from"),
                );
            }
        }
        TransformSpec::Drop { fields } => {
            if fields.is_empty() {
                e.push(
                    format!("{key}.fields"),
                    format!("{key}.fields must name at least one field"),
                );
            }
            for (k, f) in fields.iter().enumerate() {
                non_empty(e, format!("{key}.fields[{k}]"), f);
            }
        }
        TransformSpec::Identity => {}
        TransformSpec::Fail { rate } => fraction(e, format!("{key}.rate"), *rate),
        TransformSpec::Sample { keep } => fraction(e, format!("{key}.keep"), *keep),
    }
}

fn sink(key: &str, s: &SinkSpec, e: &mut ValidationErrors) {
    if let SinkSpec::Postgres(p) = s {
        crate::postgres::validate(key, p, e);
    }
    if let SinkSpec::File {
        dir,
        prefix,
        rotate_bytes,
        group_commit_batches,
        ..
    } = s
    {
        if dir.as_os_str().is_empty() {
            e.push(format!("{key}.dir"), format!("{key}.dir must not be empty"));
        }
        non_empty(e, format!("{key}.prefix"), prefix);
        positive(e, &format!("{key}.rotate_bytes"), *rotate_bytes);
        let n = *group_commit_batches;
        if !(1..=crate::pipeline::MAX_GROUP_COMMIT_BATCHES).contains(&n) {
            let k = format!("{key}.group_commit_batches");
            e.push(
                k.clone(),
                format!(
                    "{k} must be between 1 and {} (got {n})",
                    crate::pipeline::MAX_GROUP_COMMIT_BATCHES
                ),
            );
        }
    }
    if let SinkSpec::Nats(n) = s {
        crate::nats::validate(key, n, e);
    }
    fraction(e, format!("{key}.fail_rate"), s.fail_rate());
}
