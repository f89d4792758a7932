//! One representation of a QMP schema, whatever it was built from.
//!
//! It mirrors QEMU's introspection (`query-qmp-schema`, `qapi/introspect.json`): a flat list
//! of entities — commands, events and types — each with a meta-type. Bases are flattened and
//! unions carry their tag and variants, as introspection has them. Built from QAPI sources,
//! it keeps what introspection masks: real type names, the integer widths (`int8`, `uint64`,
//! `size`, ...) and `if` conditions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The JSON type a builtin type is carried as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonType {
    /// A JSON string.
    String,
    /// Any JSON number.
    Number,
    /// An integral JSON number.
    Int,
    /// `true` or `false`.
    Boolean,
    /// `null`.
    Null,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Any JSON value (`any`).
    Value,
}

/// QAPI's builtin types by name, with the JSON type each is carried as.
pub const BUILTIN_TYPES: &[(&str, JsonType)] = &[
    ("str", JsonType::String),
    ("number", JsonType::Number),
    ("int", JsonType::Int),
    ("int8", JsonType::Int),
    ("int16", JsonType::Int),
    ("int32", JsonType::Int),
    ("int64", JsonType::Int),
    ("uint8", JsonType::Int),
    ("uint16", JsonType::Int),
    ("uint32", JsonType::Int),
    ("uint64", JsonType::Int),
    ("size", JsonType::Int),
    ("bool", JsonType::Boolean),
    ("null", JsonType::Null),
    ("any", JsonType::Value),
];

/// A QAPI `if` condition: a configuration symbol, or all/any/not of conditions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cond {
    /// A configuration symbol such as `CONFIG_SPICE` or `TARGET_I386`.
    Symbol(String),
    /// All of these hold.
    All {
        /// The conditions.
        all: Vec<Cond>,
    },
    /// Any of these holds.
    Any {
        /// The conditions.
        any: Vec<Cond>,
    },
    /// This does not hold.
    Not {
        /// The condition.
        not: Box<Cond>,
    },
}

/// A member of an object type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member name on the wire.
    pub name: String,
    /// Name of its type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Optional members may be absent. (Introspection says so with `"default": null`.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Features such as `deprecated` and `unstable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Build condition (QAPI sources only).
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub cond: Option<Cond>,
}

/// A value of an enum type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnumValue {
    /// The value.
    pub name: String,
    /// Features such as `deprecated` and `unstable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Build condition (QAPI sources only).
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub cond: Option<Cond>,
}

/// A branch of a union: when the tag member has value `case`, the members of `ty` apply too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// The tag value.
    pub case: String,
    /// Name of the branch's object type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Build condition (QAPI sources only).
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub cond: Option<Cond>,
}

/// What an entity is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "meta-type", rename_all = "kebab-case")]
pub enum Meta {
    /// A builtin type (`str`, `int`, `int8`, ..., `size`, `bool`, `number`, `null`, `any`).
    Builtin {
        /// How it is carried in JSON.
        #[serde(rename = "json-type")]
        json_type: JsonType,
    },
    /// An enumeration of strings.
    Enum {
        /// The values, in order.
        members: Vec<EnumValue>,
    },
    /// An array, named `[T]`.
    Array {
        /// Name of the element type.
        #[serde(rename = "element-type")]
        element_type: String,
    },
    /// A JSON object: a struct, or a union (with `tag` and `variants`).
    Object {
        /// Members, base members first.
        members: Vec<Member>,
        /// For unions, the name of the member whose value selects a variant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
        /// For unions, the branches. A tag value with no branch adds no members.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        variants: Vec<Variant>,
    },
    /// One of several types, chosen by the JSON type of the value.
    Alternate {
        /// Names of the branch types.
        members: Vec<String>,
    },
    /// A command.
    Command {
        /// Name of the (object) type of its arguments.
        #[serde(rename = "arg-type")]
        arg_type: String,
        /// Name of the type of its return value.
        #[serde(rename = "ret-type")]
        ret_type: String,
        /// Whether it may be sent with `exec-oob`.
        #[serde(
            default,
            rename = "allow-oob",
            skip_serializing_if = "std::ops::Not::not"
        )]
        allow_oob: bool,
    },
    /// An event.
    Event {
        /// Name of the (object) type of its `data`.
        #[serde(rename = "arg-type")]
        arg_type: String,
    },
}

/// A command, event or type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// Its name (masked as `"0"`, `"1"`, ... for types in introspection).
    pub name: String,
    /// What it is.
    #[serde(flatten)]
    pub meta: Meta,
    /// Features such as `deprecated` and `unstable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Build condition (QAPI sources only).
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub cond: Option<Cond>,
}

/// A whole schema: entities by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    /// Every command, event and type.
    pub entities: BTreeMap<String, Entity>,
}

impl Schema {
    /// Looks an entity up by name.
    pub fn get(&self, name: &str) -> Option<&Entity> {
        self.entities.get(name)
    }

    /// Adds an entity, replacing one of the same name.
    pub fn insert(&mut self, entity: Entity) {
        self.entities.insert(entity.name.clone(), entity);
    }

    /// Commands in name order.
    pub fn commands(&self) -> impl Iterator<Item = &Entity> {
        self.entities
            .values()
            .filter(|e| matches!(e.meta, Meta::Command { .. }))
    }

    /// Events in name order.
    pub fn events(&self) -> impl Iterator<Item = &Entity> {
        self.entities
            .values()
            .filter(|e| matches!(e.meta, Meta::Event { .. }))
    }
}
