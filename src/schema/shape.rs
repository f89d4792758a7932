//! Schemas seen from the wire: each command's and event's members as paths
//! (`arguments.channels[].addr.transport`), so that schemas can be shown and compared without
//! relying on type names (introspection masks them differently in every build).

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::{Entity, Meta, Schema};

/// How deep a shape is unfolded; QAPI types can be recursive (a block node's backing file is
/// another block node).
pub const MAX_DEPTH: usize = 8;

/// What one path of a shape is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leaf {
    /// `str`, `int`, `int8`, ..., `bool`, `number`, `null`, `any`, `enum`, `object`, `array`,
    /// `alternate`.
    pub kind: String,
    /// Whether the member may be absent.
    pub optional: bool,
    /// Features of the member (and of the enum value, for `path=value` leaves).
    pub features: Vec<String>,
    /// The type name as the schema writes it (masked in introspection).
    pub type_name: String,
}

/// Unfolds a type into path → leaf, the root being `prefix` (`arguments`, `return`, `data`).
pub fn unfold(schema: &Schema, type_name: &str, prefix: &str) -> BTreeMap<String, Leaf> {
    let mut out = BTreeMap::new();
    walk(schema, type_name, prefix, 0, &mut Vec::new(), &mut out);
    out
}

fn kind_of(schema: &Schema, type_name: &str) -> String {
    match schema.get(type_name).map(|e| &e.meta) {
        Some(Meta::Builtin { .. }) | None => type_name.to_owned(),
        Some(Meta::Enum { .. }) => "enum".into(),
        Some(Meta::Array { .. }) => "array".into(),
        Some(Meta::Object { .. }) => "object".into(),
        Some(Meta::Alternate { .. }) => "alternate".into(),
        Some(Meta::Command { .. } | Meta::Event { .. }) => "?".into(),
    }
}

fn walk(
    schema: &Schema,
    type_name: &str,
    path: &str,
    depth: usize,
    stack: &mut Vec<String>,
    out: &mut BTreeMap<String, Leaf>,
) {
    if depth > MAX_DEPTH || stack.iter().any(|t| t == type_name) {
        return;
    }
    let Some(entity) = schema.get(type_name) else {
        return;
    };
    stack.push(type_name.to_owned());
    match &entity.meta {
        Meta::Object {
            members,
            tag,
            variants,
        } => {
            for m in members {
                let p = format!("{path}.{}", m.name);
                out.insert(
                    p.clone(),
                    Leaf {
                        kind: kind_of(schema, &m.ty),
                        optional: m.optional,
                        features: m.features.clone(),
                        type_name: m.ty.clone(),
                    },
                );
                walk(schema, &m.ty, &p, depth + 1, stack, out);
            }
            if let Some(tag) = tag {
                for v in variants {
                    walk(
                        schema,
                        &v.ty,
                        &format!("{path}.{{{tag}={}}}", v.case),
                        depth + 1,
                        stack,
                        out,
                    );
                }
            }
        }
        Meta::Array { element_type } => walk(
            schema,
            element_type,
            &format!("{path}[]"),
            depth + 1,
            stack,
            out,
        ),
        Meta::Enum { members } => {
            for v in members {
                out.insert(
                    format!("{path}={}", v.name),
                    Leaf {
                        kind: "enum-value".into(),
                        optional: false,
                        features: v.features.clone(),
                        type_name: type_name.to_owned(),
                    },
                );
            }
        }
        Meta::Alternate { members } => {
            for (i, t) in members.iter().enumerate() {
                walk(
                    schema,
                    t,
                    &format!("{path}<{i}:{}>", kind_of(schema, t)),
                    depth + 1,
                    stack,
                    out,
                );
            }
        }
        Meta::Builtin { .. } | Meta::Command { .. } | Meta::Event { .. } => {}
    }
    stack.pop();
}

/// The argument (or data) and return types of a command or event.
pub fn endpoints(entity: &Entity) -> Vec<(&'static str, &str)> {
    match &entity.meta {
        Meta::Command {
            arg_type, ret_type, ..
        } => vec![
            ("arguments", arg_type.as_str()),
            ("return", ret_type.as_str()),
        ],
        Meta::Event { arg_type } => vec![("data", arg_type.as_str())],
        _ => Vec::new(),
    }
}

/// A readable description of a command, event or type: one line per member path with its
/// type, whether it is optional, and its features; enum values listed on their member's line.
pub fn render(schema: &Schema, name: &str) -> Option<String> {
    use std::fmt::Write as _;
    let entity = schema.get(name)?;
    let mut out = String::new();
    let features = |f: &[String]| {
        if f.is_empty() {
            String::new()
        } else {
            format!(" [{}]", f.join(", "))
        }
    };
    let (what, roots): (&str, Vec<(&str, &str)>) = match &entity.meta {
        Meta::Command { allow_oob, .. } => (
            if *allow_oob {
                "command (allow-oob)"
            } else {
                "command"
            },
            endpoints(entity),
        ),
        Meta::Event { .. } => ("event", endpoints(entity)),
        Meta::Builtin { json_type } => {
            let _ = writeln!(out, "builtin {name}: JSON {json_type:?}");
            return Some(out);
        }
        Meta::Enum { .. } => ("enum", vec![("value", name)]),
        Meta::Array { .. } => ("array", vec![("element", name)]),
        Meta::Object { .. } => ("object", vec![("", name)]),
        Meta::Alternate { .. } => ("alternate", vec![("", name)]),
    };
    let _ = writeln!(out, "{what} {name}{}", features(&entity.features));
    for (prefix, ty) in roots {
        let leaves = unfold(schema, ty, prefix);
        if leaves.is_empty() && !prefix.is_empty() {
            let _ = writeln!(
                out,
                "  {prefix}: {}",
                if schema
                    .get(ty)
                    .is_some_and(|e| matches!(e.meta, Meta::Object { .. }))
                {
                    "{}"
                } else {
                    ty
                }
            );
        }
        let width = leaves
            .keys()
            .filter(|k| !k.contains('='))
            .map(String::len)
            .max()
            .unwrap_or(0)
            .min(60);
        for (path, leaf) in &leaves {
            if leaf.kind == "enum-value" {
                continue;
            }
            let mut line = format!(
                "  {path:<width$}  {}{}",
                if leaf.optional { "optional " } else { "" },
                leaf.kind
            );
            if leaf.kind != leaf.type_name && !leaf.type_name.chars().all(|c| c.is_ascii_digit()) {
                let _ = write!(line, " {}", leaf.type_name);
            }
            line.push_str(&features(&leaf.features));
            if leaf.kind == "enum" {
                let values: Vec<String> = leaves
                    .iter()
                    .filter(|(p, l)| {
                        l.kind == "enum-value"
                            && p.strip_prefix(path.as_str()).is_some_and(|rest| {
                                rest.starts_with('=') && !rest[1..].contains(['.', '=', '['])
                            })
                    })
                    .map(|(p, l)| format!("{}{}", &p[path.len() + 1..], features(&l.features)))
                    .collect();
                let _ = write!(line, ": {}", values.join(" | "));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    Some(out)
}
