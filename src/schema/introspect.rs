//! Converting between QEMU's introspection format (`query-qmp-schema`) and the model.

use serde_json::{Map, Value, json};

use super::model::{Entity, EnumValue, JsonType, Member, Meta, Schema, Variant};

/// Why an introspection document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("introspection entry {index}{}: {why}", name.as_deref().map(|n| format!(" ('{n}')")).unwrap_or_default())]
pub struct IntrospectError {
    /// Position of the entry in the array.
    pub index: usize,
    /// Its name, when it has one.
    pub name: Option<String>,
    /// What is wrong.
    pub why: String,
}

/// Reads a `query-qmp-schema` result: the bare array of `SchemaInfo`, or the whole
/// `{"return": [...]}` reply.
pub fn from_introspection(doc: &Value) -> Result<Schema, IntrospectError> {
    let list = doc.get("return").unwrap_or(doc);
    let Some(items) = list.as_array() else {
        return Err(IntrospectError {
            index: 0,
            name: None,
            why: "expected an array of SchemaInfo or a {\"return\": [...]} reply".into(),
        });
    };
    let mut schema = Schema::default();
    for (index, item) in items.iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
        let err = |why: String| IntrospectError {
            index,
            name: name.clone(),
            why,
        };
        let entity = entity(item).map_err(err)?;
        schema.insert(entity);
    }
    Ok(schema)
}

fn text<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("'{key}' must be a string"))
}

fn features(v: &Value) -> Result<Vec<String>, String> {
    match v.get("features") {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|f| {
                f.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "features must be strings".to_owned())
            })
            .collect(),
        Some(_) => Err("'features' must be an array".into()),
    }
}

fn array<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>, String> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("'{key}' must be an array"))
}

fn entity(v: &Value) -> Result<Entity, String> {
    let name = text(v, "name")?.to_owned();
    let meta = match text(v, "meta-type")? {
        "builtin" => Meta::Builtin {
            json_type: serde_json::from_value::<JsonType>(v.get("json-type").cloned().unwrap_or(Value::Null))
                .map_err(|_| "'json-type' must be one of string, number, int, boolean, null, object, array, value".to_owned())?,
        },
        "enum" => {
            // Since QEMU 6.2 `members` carries features; older schemas only have `values`.
            let members = match v.get("members") {
                Some(_) => array(v, "members")?
                    .iter()
                    .map(|m| Ok(EnumValue { name: text(m, "name")?.to_owned(), features: features(m)?, cond: None }))
                    .collect::<Result<Vec<_>, String>>()?,
                None => array(v, "values")?
                    .iter()
                    .map(|m| {
                        let name = m.as_str().ok_or("enum values must be strings")?.to_owned();
                        Ok(EnumValue { name, features: Vec::new(), cond: None })
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            };
            Meta::Enum { members }
        }
        "array" => Meta::Array { element_type: text(v, "element-type")?.to_owned() },
        "object" => {
            let members = array(v, "members")?
                .iter()
                .map(|m| {
                    Ok(Member {
                        name: text(m, "name")?.to_owned(),
                        ty: text(m, "type")?.to_owned(),
                        // A member is optional exactly when it has a default (always null).
                        optional: m.get("default").is_some(),
                        features: features(m)?,
                        cond: None,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let tag = match v.get("tag") {
                None => None,
                Some(t) => Some(t.as_str().ok_or("'tag' must be a string")?.to_owned()),
            };
            let variants = match v.get("variants") {
                None => Vec::new(),
                Some(_) => array(v, "variants")?
                    .iter()
                    .map(|b| Ok(Variant { case: text(b, "case")?.to_owned(), ty: text(b, "type")?.to_owned(), cond: None }))
                    .collect::<Result<Vec<_>, String>>()?,
            };
            Meta::Object { members, tag, variants }
        }
        "alternate" => Meta::Alternate {
            members: array(v, "members")?.iter().map(|m| text(m, "type").map(str::to_owned)).collect::<Result<_, _>>()?,
        },
        "command" => Meta::Command {
            arg_type: text(v, "arg-type")?.to_owned(),
            ret_type: text(v, "ret-type")?.to_owned(),
            allow_oob: v.get("allow-oob").and_then(Value::as_bool).unwrap_or(false),
        },
        "event" => Meta::Event { arg_type: text(v, "arg-type")?.to_owned() },
        other => return Err(format!("unknown meta-type '{other}'")),
    };
    Ok(Entity {
        name,
        meta,
        features: features(v)?,
        cond: None,
    })
}

/// Writes the schema as `query-qmp-schema` would return it (conditions dropped: QEMU only
/// reports what was built; integer widths kept as their real names).
pub fn to_introspection(schema: &Schema) -> Value {
    Value::Array(schema.entities.values().map(entity_json).collect())
}

fn with_features(mut obj: Map<String, Value>, features: &[String]) -> Value {
    if !features.is_empty() {
        obj.insert("features".into(), json!(features));
    }
    Value::Object(obj)
}

fn entity_json(e: &Entity) -> Value {
    let mut obj = Map::new();
    obj.insert("name".into(), json!(e.name));
    match &e.meta {
        Meta::Builtin { json_type } => {
            obj.insert("meta-type".into(), json!("builtin"));
            obj.insert("json-type".into(), json!(json_type));
        }
        Meta::Enum { members } => {
            obj.insert("meta-type".into(), json!("enum"));
            let list: Vec<Value> = members
                .iter()
                .map(|m| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(m.name));
                    with_features(o, &m.features)
                })
                .collect();
            obj.insert("members".into(), Value::Array(list));
            obj.insert(
                "values".into(),
                json!(members.iter().map(|m| &m.name).collect::<Vec<_>>()),
            );
        }
        Meta::Array { element_type } => {
            obj.insert("meta-type".into(), json!("array"));
            obj.insert("element-type".into(), json!(element_type));
        }
        Meta::Object {
            members,
            tag,
            variants,
        } => {
            obj.insert("meta-type".into(), json!("object"));
            let list: Vec<Value> = members
                .iter()
                .map(|m| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(m.name));
                    o.insert("type".into(), json!(m.ty));
                    if m.optional {
                        o.insert("default".into(), Value::Null);
                    }
                    with_features(o, &m.features)
                })
                .collect();
            obj.insert("members".into(), Value::Array(list));
            if let Some(tag) = tag {
                obj.insert("tag".into(), json!(tag));
                obj.insert(
                    "variants".into(),
                    Value::Array(
                        variants
                            .iter()
                            .map(|v| json!({"case": v.case, "type": v.ty}))
                            .collect(),
                    ),
                );
            }
        }
        Meta::Alternate { members } => {
            obj.insert("meta-type".into(), json!("alternate"));
            obj.insert(
                "members".into(),
                Value::Array(members.iter().map(|t| json!({"type": t})).collect()),
            );
        }
        Meta::Command {
            arg_type,
            ret_type,
            allow_oob,
        } => {
            obj.insert("meta-type".into(), json!("command"));
            obj.insert("arg-type".into(), json!(arg_type));
            obj.insert("ret-type".into(), json!(ret_type));
            if *allow_oob {
                obj.insert("allow-oob".into(), json!(true));
            }
        }
        Meta::Event { arg_type } => {
            obj.insert("meta-type".into(), json!("event"));
            obj.insert("arg-type".into(), json!(arg_type));
        }
    }
    with_features(obj, &e.features)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_introspection() {
        let doc = json!({"return": [
            {"name": "query-status", "meta-type": "command", "arg-type": "0", "ret-type": "1"},
            {"name": "migrate-pause", "meta-type": "command", "arg-type": "0", "ret-type": "0", "allow-oob": true},
            {"name": "0", "meta-type": "object", "members": []},
            {"name": "1", "meta-type": "object", "members": [
                {"name": "running", "type": "bool"},
                {"name": "singlestep", "type": "bool", "default": null, "features": ["deprecated"]},
                {"name": "status", "type": "2"}]},
            {"name": "2", "meta-type": "enum", "members": [{"name": "running"}, {"name": "paused"}], "values": ["running", "paused"]},
            {"name": "3", "meta-type": "enum", "values": ["old-style"]},
            {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
            {"name": "STOP", "meta-type": "event", "arg-type": "0"},
            {"name": "4", "meta-type": "alternate", "members": [{"type": "bool"}, {"type": "2"}]},
            {"name": "5", "meta-type": "object", "members": [{"name": "driver", "type": "2"}], "tag": "driver",
             "variants": [{"case": "running", "type": "1"}]}
        ]});
        let schema = from_introspection(&doc).unwrap();
        assert_eq!(schema.entities.len(), 10);
        let Meta::Object { members, .. } = &schema.get("1").unwrap().meta else {
            panic!()
        };
        assert!(members[1].optional && members[1].features == ["deprecated"]);
        let Meta::Enum { members } = &schema.get("3").unwrap().meta else {
            panic!()
        };
        assert_eq!(members[0].name, "old-style");
        let again = from_introspection(&to_introspection(&schema)).unwrap();
        assert_eq!(again, schema);
    }

    #[test]
    fn errors_name_the_entry() {
        let e = from_introspection(&json!([{"name": "x", "meta-type": "spaceship"}])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "introspection entry 0 ('x'): unknown meta-type 'spaceship'"
        );
        assert!(from_introspection(&json!({"x": 1})).is_err());
    }
}
