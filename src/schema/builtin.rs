//! Schemas built into qmptap, so that a capture can be checked with nothing else at hand.
//!
//! - `7.2`: introspected from Debian's QEMU 7.2 (`query-qmp-schema`), as QEMU reports it
//!   (type names masked, integer widths collapsed). Regenerate with `scripts/schemas/make.sh`.
//! - `9.1`: compiled by qmptap from QEMU 9.1's QAPI sources (real type names, integer widths
//!   and `if` conditions kept), stored in qmptap's model format.

use serde_json::Value;

use super::introspect::{self, IntrospectError};
use super::model::{Entity, Schema};
use super::{Loaded, SchemaError};

/// Versions of the built-in schemas, oldest first.
pub const VERSIONS: &[&str] = &["7.2", "9.1"];

const QEMU_7_2: &str = include_str!("../../schemas/qemu-7.2.json");
const QEMU_9_1: &str = include_str!("../../schemas/qemu-9.1.json");

/// Loads a built-in schema by version (`7.2`, `9.1`).
pub fn load(version: &str) -> Result<Loaded, SchemaError> {
    let invalid = |error| SchemaError::Introspect {
        source_name: format!("builtin:{version}"),
        error,
    };
    let json = |text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| {
            invalid(IntrospectError {
                index: 0,
                name: None,
                why: format!("the built-in data is not JSON: {e}"),
            })
        })
    };
    match version {
        "7.2" => Ok(Loaded {
            schema: introspect::from_introspection(&json(QEMU_7_2)?).map_err(invalid)?,
            description: "builtin:7.2 (introspected from QEMU 7.2.22, Debian)".into(),
        }),
        "9.1" => Ok(Loaded {
            schema: from_model_json(&json(QEMU_9_1)?).map_err(invalid)?,
            description: "builtin:9.1 (compiled from QEMU 9.1's QAPI sources)".into(),
        }),
        other => Err(SchemaError::UnknownBuiltin(other.to_owned())),
    }
}

/// The built-in schema closest to QEMU `major.minor`.
pub fn nearest(major: u64, minor: u64) -> &'static str {
    let wanted = major * 100 + minor;
    VERSIONS
        .iter()
        .min_by_key(|v| {
            let (a, b) = v.split_once('.').unwrap_or(("0", "0"));
            let have = a.parse::<u64>().unwrap_or(0) * 100 + b.parse::<u64>().unwrap_or(0);
            have.abs_diff(wanted)
        })
        .copied()
        .unwrap_or("9.1")
}

/// Whether a JSON document is qmptap's model format (an array of entities) rather than
/// introspection (whose entries have `meta-type` at the top level too, so the difference is
/// the `optional` / `default` member convention, told apart by a marker entry).
pub fn is_model_json(doc: &Value) -> bool {
    doc.get(0)
        .and_then(|e| e.get("qmptap-schema-model"))
        .is_some()
}

/// Reads qmptap's model format: a marker entry, then the entities.
pub fn from_model_json(doc: &Value) -> Result<Schema, IntrospectError> {
    let items = doc.as_array().ok_or_else(|| IntrospectError {
        index: 0,
        name: None,
        why: "expected an array".into(),
    })?;
    let mut schema = Schema::default();
    for (index, item) in items.iter().enumerate().skip(1) {
        let entity: Entity = serde_json::from_value(item.clone()).map_err(|e| IntrospectError {
            index,
            name: item.get("name").and_then(Value::as_str).map(str::to_owned),
            why: e.to_string(),
        })?;
        schema.insert(entity);
    }
    Ok(schema)
}

/// Writes qmptap's model format, one entity per line.
pub fn to_model_json(schema: &Schema) -> String {
    let mut out = String::from("[{\"qmptap-schema-model\": 1}");
    for entity in schema.entities.values() {
        out.push_str(",\n");
        out.push_str(&serde_json::to_string(entity).unwrap_or_default());
    }
    out.push_str("\n]\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_load_and_the_nearest_is_chosen() {
        for v in VERSIONS {
            let loaded = load(v).unwrap();
            assert!(loaded.schema.get("query-status").is_some(), "{v}");
        }
        assert_eq!(nearest(7, 2), "7.2");
        assert_eq!(nearest(8, 0), "7.2");
        assert_eq!(nearest(9, 0), "9.1");
        assert_eq!(nearest(10, 1), "9.1");
        assert!(matches!(load("1.0"), Err(SchemaError::UnknownBuiltin(_))));
    }
}
