//! Comparing two schemas by what crosses the wire: commands, events, their members and enum
//! values, added, removed, changed or newly deprecated/unstable.

use std::collections::BTreeSet;

use serde::Serialize;

use super::model::{Meta, Schema};
use super::shape::{Leaf, endpoints, unfold};

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `added`, `removed`, `changed`, `deprecated`, `unstable`.
    pub change: &'static str,
    /// `command`, `event`, `member`, `enum-value`.
    pub what: &'static str,
    /// The command or event.
    pub name: String,
    /// The path below it (empty for the command or event itself).
    pub path: String,
    /// Details for people: `optional str`, `int -> str`, `optional -> mandatory`.
    pub detail: String,
}

fn features_gained(old: &[String], new: &[String], feature: &str) -> bool {
    new.iter().any(|f| f == feature) && !old.iter().any(|f| f == feature)
}

fn describe(leaf: &Leaf) -> String {
    format!(
        "{}{}",
        if leaf.optional { "optional " } else { "" },
        wire_kind(&leaf.kind)
    )
}

/// The kind as the wire sees it: introspection collapses every integer width to `int`, so
/// widths cannot be compared across a source-built and an introspected schema.
fn wire_kind(kind: &str) -> &str {
    match kind {
        "int8" | "int16" | "int32" | "int64" | "uint8" | "uint16" | "uint32" | "uint64"
        | "size" => "int",
        other => other,
    }
}

/// Differences from `old` to `new`.
pub fn diff(old: &Schema, new: &Schema) -> Vec<Change> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = old
        .entities
        .iter()
        .chain(new.entities.iter())
        .filter(|(_, e)| matches!(e.meta, Meta::Command { .. } | Meta::Event { .. }))
        .map(|(n, _)| n)
        .collect();
    for name in names {
        let what = |e: &super::model::Entity| {
            if matches!(e.meta, Meta::Command { .. }) {
                "command"
            } else {
                "event"
            }
        };
        match (old.get(name), new.get(name)) {
            (Some(a), None) => out.push(Change {
                change: "removed",
                what: what(a),
                name: name.clone(),
                path: String::new(),
                detail: String::new(),
            }),
            (None, Some(b)) => out.push(Change {
                change: "added",
                what: what(b),
                name: name.clone(),
                path: String::new(),
                detail: String::new(),
            }),
            (Some(a), Some(b)) => {
                for feature in ["deprecated", "unstable"] {
                    if features_gained(&a.features, &b.features, feature) {
                        let change = if feature == "deprecated" {
                            "deprecated"
                        } else {
                            "unstable"
                        };
                        out.push(Change {
                            change,
                            what: what(b),
                            name: name.clone(),
                            path: String::new(),
                            detail: String::new(),
                        });
                    }
                }
                if let (Meta::Command { allow_oob: x, .. }, Meta::Command { allow_oob: y, .. }) =
                    (&a.meta, &b.meta)
                {
                    if x != y {
                        out.push(Change {
                            change: "changed",
                            what: "command",
                            name: name.clone(),
                            path: String::new(),
                            detail: format!("allow-oob {x} -> {y}"),
                        });
                    }
                }
                for ((prefix, ta), (_, tb)) in endpoints(a).into_iter().zip(endpoints(b)) {
                    let left = unfold(old, ta, prefix);
                    let right = unfold(new, tb, prefix);
                    compare(name, &left, &right, &mut out);
                }
            }
            (None, None) => {}
        }
    }
    out
}

fn compare(
    name: &str,
    left: &std::collections::BTreeMap<String, Leaf>,
    right: &std::collections::BTreeMap<String, Leaf>,
    out: &mut Vec<Change>,
) {
    let what = |path: &str, leaf: &Leaf| {
        if leaf.kind == "enum-value" || path.ends_with('=') {
            "enum-value"
        } else {
            "member"
        }
    };
    for (path, l) in left {
        match right.get(path) {
            None => out.push(Change {
                change: "removed",
                what: what(path, l),
                name: name.to_owned(),
                path: path.clone(),
                detail: describe(l),
            }),
            Some(r) => {
                if wire_kind(&l.kind) != wire_kind(&r.kind) || l.optional != r.optional {
                    out.push(Change {
                        change: "changed",
                        what: what(path, r),
                        name: name.to_owned(),
                        path: path.clone(),
                        detail: format!("{} -> {}", describe(l), describe(r)),
                    });
                }
                for feature in ["deprecated", "unstable"] {
                    if features_gained(&l.features, &r.features, feature) {
                        let change = if feature == "deprecated" {
                            "deprecated"
                        } else {
                            "unstable"
                        };
                        out.push(Change {
                            change,
                            what: what(path, r),
                            name: name.to_owned(),
                            path: path.clone(),
                            detail: describe(r),
                        });
                    }
                }
            }
        }
    }
    for (path, r) in right {
        if !left.contains_key(path) {
            out.push(Change {
                change: "added",
                what: what(path, r),
                name: name.to_owned(),
                path: path.clone(),
                detail: describe(r),
            });
        }
    }
}
