//! The one normaliser: masks the values that legitimately differ from run to run (event
//! timestamps, ids the client chose, migration counters, fd numbers, ...) so that two sessions
//! can be compared. Replay, the mock server and diff all use it; each rule has a name and a
//! reason, and users add their own with `--ignore NAME:PATH`.
//!
//! A rule masks a value by replacing it with the string `"<name>"`; presence and absence are
//! still compared, as is everything the rules do not name.

use std::fmt::{self, Write as _};

use serde_json::Value;

/// One step of a rule's path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// An object member.
    Key(String),
    /// Any member of an object, or any element of an array (`*`).
    Any,
    /// Any element of an array (`[]`).
    Each,
}

/// A named masking rule: `NAME:PATH` applies to the messages of one command (its command and
/// reply) or event; `PATH` alone to every message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Short name, shown in reports.
    pub name: String,
    /// Why the value is volatile.
    pub why: String,
    /// Command or event name it applies to; `None` for all messages.
    pub scope: Option<String>,
    path: Vec<Seg>,
    text: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Some(scope) => write!(f, "{}: {scope}:{} ({})", self.name, self.text, self.why),
            None => write!(f, "{}: {} ({})", self.name, self.text, self.why),
        }
    }
}

/// A `--ignore` value that is not `[NAME:]PATH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --ignore '{0}': expected [NAME:]PATH, e.g. query-migrate:return.ram.* or data.offset ('*' any member or element, '[]' any element)"
)]
pub struct RuleError(String);

impl Rule {
    /// Parses `[NAME:]PATH`: NAME a command or event name, PATH dotted members from the
    /// message's root with `*` for any member or element and `[]` for every element
    /// (`return[].current-progress`).
    pub fn parse(name: &str, why: &str, spec: &str) -> Result<Rule, RuleError> {
        let err = || RuleError(spec.to_owned());
        let (scope, text) = match spec.split_once(':') {
            Some((scope, path)) if !scope.is_empty() => (Some(scope.to_owned()), path),
            Some(_) => return Err(err()),
            None => (None, spec),
        };
        let mut path = Vec::new();
        for part in text.split('.') {
            let (key, arrays) = match part.find("[]") {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if arrays.len() % 2 != 0
                || !arrays
                    .chars()
                    .collect::<Vec<_>>()
                    .chunks(2)
                    .all(|c| c == ['[', ']'])
            {
                return Err(err());
            }
            match key {
                "" if arrays.is_empty() => return Err(err()),
                k if k.contains(['[', ']']) => return Err(err()),
                "" => {}
                "*" => path.push(Seg::Any),
                k => path.push(Seg::Key(k.to_owned())),
            }
            path.extend(std::iter::repeat_n(Seg::Each, arrays.len() / 2));
        }
        if path.is_empty() {
            return Err(err());
        }
        Ok(Rule {
            name: name.to_owned(),
            why: why.to_owned(),
            scope,
            path,
            text: text.to_owned(),
        })
    }

    fn applies(&self, name: Option<&str>) -> bool {
        self.scope.as_deref().is_none_or(|s| Some(s) == name)
    }
}

fn mask(value: &mut Value, path: &[Seg], label: &str) {
    let Some((first, rest)) = path.split_first() else {
        *value = Value::String(format!("<{label}>"));
        return;
    };
    match (first, value) {
        (Seg::Key(k), Value::Object(map)) => {
            if let Some(v) = map.get_mut(k) {
                mask(v, rest, label);
            }
        }
        (Seg::Any, Value::Object(map)) => {
            for v in map.values_mut() {
                mask(v, rest, label);
            }
        }
        (Seg::Any | Seg::Each, Value::Array(items)) => {
            for v in items {
                mask(v, rest, label);
            }
        }
        _ => {}
    }
}

/// The rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalizer {
    rules: Vec<Rule>,
    /// Events whose number varies from run to run: `(rule name, why, event)`. One more or one
    /// fewer of them is explained, not a difference.
    counted: Vec<(String, String, String)>,
}

/// The built-in rules: `(name, why, [NAME:]PATH)`.
const DEFAULT_RULES: &[(&str, &str, &str)] = &[
    (
        "event-time",
        "events carry the host time they were emitted at",
        "timestamp",
    ),
    (
        "client-id",
        "the client chooses ids; replay and mocks use their own",
        "id",
    ),
    (
        "qemu-package",
        "the build's package string",
        "QMP.version.package",
    ),
    (
        "qemu-package",
        "the build's package string",
        "query-version:return.package",
    ),
    (
        "migration-progress",
        "migration counters depend on timing",
        "query-migrate:return.ram.*",
    ),
    (
        "migration-progress",
        "migration counters depend on timing",
        "query-migrate:return.disk.*",
    ),
    (
        "migration-progress",
        "migration counters depend on timing",
        "query-migrate:return.xbzrle-cache.*",
    ),
    (
        "migration-time",
        "migration durations depend on timing",
        "query-migrate:return.total-time",
    ),
    (
        "migration-time",
        "migration durations depend on timing",
        "query-migrate:return.setup-time",
    ),
    (
        "migration-time",
        "migration durations depend on timing",
        "query-migrate:return.downtime",
    ),
    (
        "migration-time",
        "migration durations depend on timing",
        "query-migrate:return.expected-downtime",
    ),
    (
        "migration-time",
        "migration durations depend on timing",
        "query-migrate:return.cpu-throttle-percentage",
    ),
    (
        "job-progress",
        "job progress depends on timing",
        "query-jobs:return[].current-progress",
    ),
    (
        "job-progress",
        "job progress depends on timing",
        "query-block-jobs:return[].offset",
    ),
    (
        "job-progress",
        "job progress depends on timing",
        "query-block-jobs:return[].busy",
    ),
    (
        "fd-number",
        "QEMU's own descriptor numbers",
        "add-fd:return.fd",
    ),
    (
        "host-thread-id",
        "the host's thread ids of vCPUs and iothreads differ on every run",
        "query-cpus-fast:return[].thread-id",
    ),
    (
        "host-thread-id",
        "the host's thread ids of vCPUs and iothreads differ on every run",
        "query-iothreads:return[].thread-id",
    ),
    (
        "fd-number",
        "QEMU's own descriptor numbers",
        "query-fdsets:return[].fds[].fd",
    ),
];

/// Events whose number is volatile: `(name, why, event)`.
const DEFAULT_COUNTED: &[(&str, &str, &str)] = &[(
    "migration-passes",
    "how many RAM passes a migration needs depends on how fast the guest dirties memory",
    "MIGRATION_PASS",
)];

impl Default for Normalizer {
    fn default() -> Self {
        Normalizer {
            rules: DEFAULT_RULES
                .iter()
                .filter_map(|(name, why, spec)| Rule::parse(name, why, spec).ok())
                .collect(),
            counted: DEFAULT_COUNTED
                .iter()
                .map(|(n, w, e)| ((*n).to_owned(), (*w).to_owned(), (*e).to_owned()))
                .collect(),
        }
    }
}

/// Whether an `--ignore` value names an event (upper case, as QMP names events) rather than
/// a path.
fn is_event_name(spec: &str) -> bool {
    !spec.is_empty()
        && spec
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

impl Normalizer {
    /// The built-in rules plus `--ignore` values (named `ignore`): `[NAME:]PATH` masks a value,
    /// an event name alone (`MIGRATION_PASS`) makes that event's number volatile.
    pub fn with_ignores<S: AsRef<str>>(ignores: &[S]) -> Result<Normalizer, RuleError> {
        let mut n = Normalizer::default();
        for spec in ignores {
            let spec = spec.as_ref();
            if is_event_name(spec) {
                n.counted
                    .push(("ignore".into(), "--ignore".into(), spec.to_owned()));
            } else {
                n.rules.push(Rule::parse("ignore", "--ignore", spec)?);
            }
        }
        Ok(n)
    }

    /// No rules at all: compare everything.
    pub fn none() -> Normalizer {
        Normalizer {
            rules: Vec::new(),
            counted: Vec::new(),
        }
    }

    /// The rule that makes the number of `event` volatile, if one does: its name and why.
    pub fn counted_event(&self, event: &str) -> Option<(&str, &str)> {
        self.counted
            .iter()
            .find(|(_, _, e)| e == event)
            .map(|(n, w, _)| (n.as_str(), w.as_str()))
    }

    /// The rules, for reports and documentation.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Masks the volatile values of a message. `name` is the command or event it concerns
    /// (for a reply, its command's name).
    pub fn normalize(&self, name: Option<&str>, value: &mut Value) {
        for rule in &self.rules {
            if rule.applies(name) {
                mask(value, &rule.path, &rule.name);
            }
        }
    }

    /// A normalised copy.
    pub fn normalized(&self, name: Option<&str>, value: &Value) -> Value {
        let mut v = value.clone();
        self.normalize(name, &mut v);
        v
    }
}

/// One structural difference between two JSON values.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Difference {
    /// Where: `return.status`, `data.offset`, `return[2].name`.
    pub path: String,
    /// The value on the left (expected) side, absent if the member is only on the right.
    pub left: Option<Value>,
    /// The value on the right (actual) side, absent if the member is only on the left.
    pub right: Option<Value>,
}

/// The differences between two JSON values; objects are compared by member, in any order.
pub fn differences(left: &Value, right: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    walk(left, right, &mut String::new(), &mut out);
    out
}

fn walk(left: &Value, right: &Value, path: &mut String, out: &mut Vec<Difference>) {
    match (left, right) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match b.get(k) {
                    Some(vb) => walk(va, vb, path, out),
                    None => out.push(Difference {
                        path: path.clone(),
                        left: Some(va.clone()),
                        right: None,
                    }),
                }
                path.truncate(len);
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    out.push(Difference {
                        path: p,
                        left: None,
                        right: Some(vb.clone()),
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(x, y, path, out),
                    (x, y) => out.push(Difference {
                        path: path.clone(),
                        left: x.cloned(),
                        right: y.cloned(),
                    }),
                }
                path.truncate(len);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Difference {
            path: path.clone(),
            left: Some(a.clone()),
            right: Some(b.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    #[allow(clippy::many_single_char_names)] // a, b, c, d: the values compared
    fn default_rules_mask_volatile_values_only() {
        let n = Normalizer::default();
        let a = json!({"return": {"status": "active", "total-time": 403, "ram": {"transferred": 5, "total": 9}}, "id": "a"});
        let b = json!({"return": {"status": "active", "total-time": 800, "ram": {"transferred": 7, "total": 9}}, "id": 12});
        assert_eq!(
            n.normalized(Some("query-migrate"), &a),
            n.normalized(Some("query-migrate"), &b)
        );
        let c = json!({"return": {"status": "completed", "total-time": 1, "ram": {}}, "id": "a"});
        let d = differences(
            &n.normalized(Some("query-migrate"), &a),
            &n.normalized(Some("query-migrate"), &c),
        );
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "return.status",
                "return.ram.transferred",
                "return.ram.total"
            ]
        );
        // Rules are scoped: another command's total-time is compared.
        assert_ne!(
            n.normalized(Some("query-x"), &a),
            n.normalized(Some("query-x"), &b)
        );
    }

    #[test]
    fn ignore_paths_parse_and_apply() {
        let n = Normalizer::with_ignores(&[
            "BLOCK_JOB_COMPLETED:data.offset",
            "return[].fds[].fd",
            "data.*",
        ])
        .unwrap();
        let mut v = json!({"return": [{"fds": [{"fd": 3}, {"fd": 4}], "fdset-id": 1}]});
        n.normalize(None, &mut v);
        assert_eq!(
            v,
            json!({"return": [{"fds": [{"fd": "<ignore>"}, {"fd": "<ignore>"}], "fdset-id": 1}]})
        );
        for bad in ["", ":x", "a..b", "x[", "x[]]"] {
            assert!(Rule::parse("t", "t", bad).is_err(), "{bad}");
        }
        assert_eq!(Normalizer::default().rules().len(), DEFAULT_RULES.len());
        let n = Normalizer::with_ignores(&["BLOCK_JOB_READY"]).unwrap();
        assert_eq!(
            n.counted_event("BLOCK_JOB_READY"),
            Some(("ignore", "--ignore"))
        );
        assert_eq!(
            n.counted_event("MIGRATION_PASS").map(|r| r.0),
            Some("migration-passes")
        );
        assert_eq!(n.counted_event("STOP"), None);
    }

    #[test]
    fn differences_have_paths() {
        let d = differences(
            &json!({"a": [1, {"b": 2}], "c": 1}),
            &json!({"a": [1, {"b": 3}, 4], "d": 1}),
        );
        let got: Vec<(&str, Option<Value>, Option<Value>)> = d
            .iter()
            .map(|d| (d.path.as_str(), d.left.clone(), d.right.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("a[1].b", Some(json!(2)), Some(json!(3))),
                ("a[2]", None, Some(json!(4))),
                ("c", Some(json!(1)), None),
                ("d", None, Some(json!(1))),
            ]
        );
    }
}
