//! Validating QMP messages against a [`Schema`]: commands with their arguments, replies, errors
//! and events, the way QEMU's `QObject` input visitor and QMP dispatcher would judge them, plus
//! the use of `deprecated` and `unstable` features (QEMU's `-compat` policy model).
//!
//! [`Checker::new`] turns the schema into a compact form once: every type name resolved to an
//! index, members and enum values in hash maps. Checking a message then allocates only for the
//! findings it reports (and for the path string as it grows).
//!
//! # Robustness
//!
//! Messages and schemas are both untrusted. Nothing here panics; recursion follows the JSON
//! value and stops at [`MAX_DEPTH`] levels with a [`Rule::TooDeep`] finding; union flattening
//! (a variant that is itself a union) stops after [`MAX_UNION_NESTING`] levels, so a union whose
//! variant is the union itself cannot loop. Alternate branches that are themselves alternates
//! (which QAPI forbids) are ignored rather than followed. Broken schema references (undefined
//! types, commands used as types, variants that are not objects) give [`Rule::SchemaError`]
//! findings where a value meets them.
//!
//! # Paths
//!
//! [`Finding::path`] is a path from the message root: `.name` for members and `[3]` for array
//! elements, without a leading dot (`arguments.channels[0].addr.transport`); `""` is the whole
//! message. A member name made of anything but ASCII letters, digits, `-` and `_` is written as
//! a JSON string in brackets, again without a dot: `arguments["odd key"]`, `["a.b"]`.
//!
//! # What is not checked
//!
//! `if` conditions in schemas built from QAPI sources are not evaluated: every conditional
//! member and enum value is accepted. Session state (negotiation, whether OOB was enabled, id
//! pairing) belongs to the caller.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::{BUILTIN_TYPES, JsonType, Meta, Schema};

/// Deepest nesting followed into a value. Past it a [`Rule::TooDeep`] finding is reported and
/// the value is not examined further.
///
/// Checking recurses once per level and takes about 1 KiB of stack per level of nested objects
/// in a release build (2 KiB unoptimised), so 512 levels stay within 0.5 MiB (1 MiB) — safe on
/// any thread with the usual 2 MiB stack. QEMU's parser allows 1024 levels, but `serde_json`
/// stops at 128 by default, so only values built in code (or parsed without that limit) come
/// near this bound; and `any` values, which can nest freely, are not descended into at all.
pub const MAX_DEPTH: usize = 512;

/// Most unions flattened into one object: a union's variant may itself be a union (QEMU's
/// `MigrationAddress` → `SocketAddress` is two levels). Past it a [`Rule::SchemaError`] finding
/// is reported: only a schema whose union variants lead back to themselves gets there.
pub const MAX_UNION_NESTING: usize = 16;

/// Most array levels understood in a type name written `[[T]]` that the schema lacks (QAPI
/// itself has only one level). Deeper names are undefined types.
pub const MAX_ARRAY_NAME_NESTING: usize = 32;

/// The error classes QEMU sends (`qapi/error.json`, `QapiErrorClass`). Introspection does not
/// carry this enum, so it is fixed here; it has not changed since QEMU 1.2.
pub const ERROR_CLASSES: &[&str] = &[
    "GenericError",
    "CommandNotFound",
    "DeviceNotActive",
    "DeviceNotFound",
    "KVMMissingCap",
];

/// Commands whose arguments may hold members beyond their schema type. QEMU implements
/// `device_add` by hand (`'gen': false`) and passes the extra members to the device as
/// properties. Neither introspection nor the model records `gen`, so the list is by name; the
/// declared members are still checked.
pub const OPEN_ARGUMENT_COMMANDS: &[&str] = &["device_add"];

/// Enum values listed in a [`Rule::BadEnumValue`] finding before the list is cut short.
const MAX_LISTED_VALUES: usize = 12;

/// Characters of a string value quoted in a finding before it is cut short.
const MAX_QUOTED_CHARS: usize = 64;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// QEMU accepts the message, but it relies on something worth a look (a deprecated or
    /// unstable feature under a lenient policy, a negative `uint64` that QEMU wraps).
    Warning,
    /// QEMU would reject the message (or, for output, the server broke its own schema).
    Error,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The message, or its `arguments` or `data`, is not a JSON object.
    NotAnObject,
    /// The command is not in the schema.
    UnknownCommand,
    /// `exec-oob` for a command without `allow-oob`.
    OobNotAllowed,
    /// A mandatory member is absent.
    MissingMember,
    /// A member the type does not have.
    UnknownMember,
    /// A value of the wrong JSON type.
    WrongType,
    /// An integer outside its type's range.
    OutOfRange,
    /// A string that is not a value of its enum.
    BadEnumValue,
    /// No branch of an alternate takes a value of this JSON type.
    NoAlternateMatch,
    /// The event is not in the schema.
    UnknownEvent,
    /// An error reply's class is not one QEMU sends.
    UnknownErrorClass,
    /// A reply with both or neither of `return` and `error`.
    BadReply,
    /// A command with both `execute` and `exec-oob`.
    BadCommand,
    /// Use of something with the `deprecated` feature.
    Deprecated,
    /// Use of something with the `unstable` feature.
    Unstable,
    /// The value nests deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The schema itself is broken where the value needs it: an undefined type, a command or
    /// event used as a type, a union variant that is not an object, unions nested past
    /// [`MAX_UNION_NESTING`].
    SchemaError,
}

impl Rule {
    /// The rule's name as serialized (`"wrong-type"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::NotAnObject => "not-an-object",
            Rule::UnknownCommand => "unknown-command",
            Rule::OobNotAllowed => "oob-not-allowed",
            Rule::MissingMember => "missing-member",
            Rule::UnknownMember => "unknown-member",
            Rule::WrongType => "wrong-type",
            Rule::OutOfRange => "out-of-range",
            Rule::BadEnumValue => "bad-enum-value",
            Rule::NoAlternateMatch => "no-alternate-match",
            Rule::UnknownEvent => "unknown-event",
            Rule::UnknownErrorClass => "unknown-error-class",
            Rule::BadReply => "bad-reply",
            Rule::BadCommand => "bad-command",
            Rule::Deprecated => "deprecated",
            Rule::Unstable => "unstable",
            Rule::TooDeep => "too-deep",
            Rule::SchemaError => "schema-error",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What kind of problem.
    pub rule: Rule,
    /// How serious.
    pub severity: Severity,
    /// Where, from the message root (see the module documentation); `""` is the whole message.
    pub path: String,
    /// What the schema wants there, e.g. `"int8 (-128..=127)"`, `"member 'uri' (str)"`.
    pub expected: String,
    /// What is there, e.g. `"300"`, `"\"tcpp\""`, `"nothing"`, `"member 'bogus'"`.
    pub found: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        let path = if self.path.is_empty() {
            "(message)"
        } else {
            &self.path
        };
        write!(
            f,
            "{severity}[{}] {path}: expected {}, found {}",
            self.rule, self.expected, self.found
        )
    }
}

/// How to rate the use of deprecated and unstable features: a denied feature gives
/// [`Severity::Error`], an allowed one [`Severity::Warning`] (QEMU's
/// `-compat deprecated-input=reject,unstable-input=reject` versus `accept`). Only what the client
/// sends is rated: deprecated members in QEMU's replies and events are QEMU's output, not the
/// client's choice (QEMU's own knob for them is `deprecated-output=hide`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Deprecated commands, members, enum values and events are errors.
    pub deny_deprecated: bool,
    /// Unstable commands, members, enum values and events are errors.
    pub deny_unstable: bool,
}

/// Drops the feature findings that checking QEMU's output (from index `from` on) produced: see
/// [`Policy`].
fn output_only(out: &mut Vec<Finding>, from: usize) {
    if out[from..]
        .iter()
        .any(|f| matches!(f.rule, Rule::Deprecated | Rule::Unstable))
    {
        let kept: Vec<Finding> = out
            .drain(from..)
            .filter(|f| !matches!(f.rule, Rule::Deprecated | Rule::Unstable))
            .collect();
        out.extend(kept);
    }
}

/// Validates messages against one schema. Build it once per schema; checking takes `&self`, so
/// one checker can serve several threads.
pub struct Checker<'s> {
    schema: &'s Schema,
    policy: Policy,
    /// Every type, by index. Members, arrays, variants and alternates refer to these indexes.
    types: Vec<Ty<'s>>,
    /// Type names (schema entities, and the builtins and undefined names they refer to).
    ids: FxMap<&'s str, Id>,
    commands: FxMap<&'s str, Command>,
    events: FxMap<&'s str, Event>,
}

/// Index into [`Checker::types`].
type Id = u32;

/// Feature bits of a command, event, member or enum value.
const DEPRECATED: u8 = 1;
const UNSTABLE: u8 = 2;

struct Command {
    args: Id,
    ret: Id,
    allow_oob: bool,
    features: u8,
    /// Extra argument members are properties ([`OPEN_ARGUMENT_COMMANDS`]).
    open: bool,
}

struct Event {
    args: Id,
    features: u8,
}

struct Ty<'s> {
    /// The name used in findings (`"int8"`, `"object MigrationChannel"`, `"enum 12"`).
    label: String,
    kind: Kind<'s>,
}

enum Kind<'s> {
    Any,
    Str,
    Number,
    Bool,
    Null,
    /// A builtin carried as a JSON object or array without further structure.
    AnyObject,
    AnyArray,
    /// An integer type and its range. `wraps`: QEMU also takes negative int64 values and wraps
    /// them (`uint64` and `size`, for backward compatibility).
    Int {
        min: i128,
        max: i128,
        wraps: bool,
    },
    Enum(EnumTy<'s>),
    Array(Id),
    Object(ObjTy<'s>),
    Alternate(AltTy),
    /// A name no entity has.
    Undefined,
    /// A command or event used as a type.
    NotAType,
    /// Placeholder while the checker is built.
    Pending,
}

struct EnumTy<'s> {
    /// Values in schema order, for messages.
    values: Vec<&'s str>,
    /// Value to its feature bits.
    index: FxMap<&'s str, u8>,
}

struct MemberTy<'s> {
    name: &'s str,
    ty: Id,
    optional: bool,
    features: u8,
}

struct ObjTy<'s> {
    members: Vec<MemberTy<'s>>,
    /// Member name to index in `members` (the first, if a broken schema repeats a name).
    index: FxMap<&'s str, u32>,
    /// How many members are mandatory.
    required: usize,
    /// Union tag: the member name and its type.
    tag: Option<(&'s str, Option<Id>)>,
    /// Tag value to variant type.
    variants: FxMap<&'s str, Id>,
}

/// The object types whose members apply to one JSON object (see [`Checker::object`]).
struct Layers<'c, 's> {
    objs: [Option<&'c ObjTy<'s>>; MAX_UNION_NESTING],
    count: usize,
    /// A union whose variant could not be chosen (tag missing or invalid).
    undecided: Option<&'c ObjTy<'s>>,
}

impl<'c, 's> Layers<'c, 's> {
    fn iter(&self) -> impl Iterator<Item = &'c ObjTy<'s>> + '_ {
        self.objs.iter().take(self.count).flatten().copied()
    }

    fn member(&self, key: &str) -> Option<&'c MemberTy<'s>> {
        self.iter().find_map(|obj| {
            obj.index
                .get(key)
                .and_then(|&i| obj.members.get(i as usize))
        })
    }

    fn required(&self) -> usize {
        self.iter().map(|o| o.required).sum()
    }
}

/// An alternate's branch for each JSON type (QEMU chooses by the `QType` of the value).
#[derive(Default)]
struct AltTy {
    string: Option<Id>,
    number: Option<Id>,
    boolean: Option<Id>,
    null: Option<Id>,
    object: Option<Id>,
    array: Option<Id>,
    /// An `any` branch (QAPI forbids it, but an introspected schema could say so): takes
    /// whatever no other branch takes.
    any: Option<Id>,
    /// All branches, for messages.
    branches: Vec<Id>,
}

/// Integer types whose presence shows that the schema keeps integer widths (one compiled from
/// QAPI sources); introspection collapses them all into `int`.
const WIDTH_NAMES: &[&str] = &[
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "size",
];

/// The range of integer builtin `name` and whether QEMU wraps negative values into it.
/// `collapsed`: the schema has a single `int` for every width.
fn int_range(name: &str, collapsed: bool) -> (i128, i128, bool) {
    match name {
        "int8" => (i8::MIN.into(), i8::MAX.into(), false),
        "int16" => (i16::MIN.into(), i16::MAX.into(), false),
        "int32" => (i32::MIN.into(), i32::MAX.into(), false),
        "uint8" => (0, u8::MAX.into(), false),
        "uint16" => (0, u16::MAX.into(), false),
        "uint32" => (0, u32::MAX.into(), false),
        "uint64" | "size" => (0, u64::MAX.into(), true),
        // An introspected `int` stands for every width, `size` and `uint64` included: any value
        // of either int64 or uint64 may be legitimate.
        "int" if collapsed => (i64::MIN.into(), u64::MAX.into(), false),
        _ => (i64::MIN.into(), i64::MAX.into(), false),
    }
}

fn feature_bits(features: &[String]) -> u8 {
    features.iter().fold(0, |bits, f| match f.as_str() {
        "deprecated" => bits | DEPRECATED,
        "unstable" => bits | UNSTABLE,
        _ => bits,
    })
}

/// A masked type name (introspection names types `"0"`, `"1"`, ...), which says nothing alone.
fn is_masked(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

impl<'s> Checker<'s> {
    /// Prepares `schema` for checking under `policy`. Any schema is accepted: broken references
    /// show up as [`Rule::SchemaError`] findings when a value meets them.
    pub fn new(schema: &'s Schema, policy: Policy) -> Checker<'s> {
        let mut b = Builder {
            types: Vec::with_capacity(schema.entities.len() + BUILTIN_TYPES.len()),
            ids: FxMap::default(),
            collapsed: schema.get("int").is_some()
                && !WIDTH_NAMES.iter().any(|n| schema.get(n).is_some()),
        };
        // First give every entity an index, so that references can be resolved in one pass.
        for name in schema.entities.keys() {
            let id = b.push(String::new(), Kind::Pending);
            b.ids.insert(name.as_str(), id);
        }
        for &(name, json_type) in BUILTIN_TYPES {
            if !b.ids.contains_key(name) {
                let kind = b.builtin_kind(name, json_type);
                let id = b.push(name.to_owned(), kind);
                b.ids.insert(name, id);
            }
        }
        let mut commands = FxMap::default();
        let mut events = FxMap::default();
        for (name, entity) in &schema.entities {
            let Some(&id) = b.ids.get(name.as_str()) else {
                continue;
            };
            let short = short_name(name);
            let (label, kind) = match &entity.meta {
                // Builtins keep their plain names; everything else says what it is, which matters
                // for masked names ("object 12" rather than "12").
                Meta::Builtin { json_type } => {
                    let label = if is_masked(name) {
                        format!("builtin {short}")
                    } else {
                        short
                    };
                    (label, b.builtin_kind(name, *json_type))
                }
                Meta::Enum { members } => {
                    let mut index = FxMap::default();
                    for v in members {
                        index
                            .entry(v.name.as_str())
                            .or_insert_with(|| feature_bits(&v.features));
                    }
                    let kind = Kind::Enum(EnumTy {
                        values: members.iter().map(|v| v.name.as_str()).collect(),
                        index,
                    });
                    (format!("enum {short}"), kind)
                }
                Meta::Array { element_type } => (
                    format!("array {short}"),
                    Kind::Array(b.resolve(element_type)),
                ),
                Meta::Object {
                    members,
                    tag,
                    variants,
                } => {
                    let mut index = FxMap::default();
                    let mut list = Vec::with_capacity(members.len());
                    for m in members {
                        let i = u32::try_from(list.len()).unwrap_or(u32::MAX);
                        index.entry(m.name.as_str()).or_insert(i);
                        list.push(MemberTy {
                            name: &m.name,
                            ty: b.resolve(&m.ty),
                            optional: m.optional,
                            features: feature_bits(&m.features),
                        });
                    }
                    let tag = tag.as_deref().map(|t| {
                        let ty = members
                            .iter()
                            .find(|m| m.name == t)
                            .map(|m| b.resolve(&m.ty));
                        (t, ty)
                    });
                    let mut vmap = FxMap::default();
                    for v in variants {
                        let ty = b.resolve(&v.ty);
                        vmap.entry(v.case.as_str()).or_insert(ty);
                    }
                    let kind = Kind::Object(ObjTy {
                        required: list.iter().filter(|m| !m.optional).count(),
                        members: list,
                        index,
                        tag,
                        variants: vmap,
                    });
                    (format!("object {short}"), kind)
                }
                Meta::Alternate { members } => {
                    let branches = members.iter().map(|m| b.resolve(m)).collect();
                    (
                        format!("alternate {short}"),
                        Kind::Alternate(AltTy {
                            branches,
                            ..AltTy::default()
                        }),
                    )
                }
                Meta::Command {
                    arg_type,
                    ret_type,
                    allow_oob,
                } => {
                    commands.insert(
                        name.as_str(),
                        Command {
                            args: b.resolve(arg_type),
                            ret: b.resolve(ret_type),
                            allow_oob: *allow_oob,
                            features: feature_bits(&entity.features),
                            open: OPEN_ARGUMENT_COMMANDS.contains(&name.as_str()),
                        },
                    );
                    (format!("command {short}"), Kind::NotAType)
                }
                Meta::Event { arg_type } => {
                    events.insert(
                        name.as_str(),
                        Event {
                            args: b.resolve(arg_type),
                            features: feature_bits(&entity.features),
                        },
                    );
                    (format!("event {short}"), Kind::NotAType)
                }
            };
            if let Some(ty) = b.types.get_mut(id as usize) {
                ty.label = label;
                ty.kind = kind;
            }
        }
        // Alternates last: classifying a branch needs its kind.
        for i in 0..b.types.len() {
            let branches = match &b.types[i].kind {
                Kind::Alternate(alt) => alt.branches.clone(),
                _ => continue,
            };
            let mut alt = AltTy {
                branches: branches.clone(),
                ..AltTy::default()
            };
            for id in branches {
                let slot = match b.types.get(id as usize).map(|t| &t.kind) {
                    Some(Kind::Str | Kind::Enum(_)) => &mut alt.string,
                    Some(Kind::Number | Kind::Int { .. }) => &mut alt.number,
                    Some(Kind::Bool) => &mut alt.boolean,
                    Some(Kind::Null) => &mut alt.null,
                    Some(Kind::Object(_) | Kind::AnyObject) => &mut alt.object,
                    Some(Kind::Array(_) | Kind::AnyArray) => &mut alt.array,
                    Some(Kind::Any) => &mut alt.any,
                    // Nested alternates and broken references cannot take a value.
                    _ => continue,
                };
                // As in QEMU's generated code, the first branch of a JSON type wins.
                slot.get_or_insert(id);
            }
            b.types[i].kind = Kind::Alternate(alt);
        }
        Checker {
            schema,
            policy,
            types: b.types,
            ids: b.ids,
            commands,
            events,
        }
    }

    /// The schema this checker validates against.
    pub fn schema(&self) -> &'s Schema {
        self.schema
    }

    /// Checks a command: `{"execute"|"exec-oob": NAME, "arguments"?: {...}, "id"?: any}`.
    /// An absent `arguments` counts as `{}`.
    pub fn check_command(&self, msg: &Value, out: &mut Vec<Finding>) {
        let Value::Object(m) = msg else {
            not_an_object(out, "", msg);
            return;
        };
        let (key, name) = match (m.get("execute"), m.get("exec-oob")) {
            (Some(name), None) => ("execute", name),
            (None, Some(name)) => ("exec-oob", name),
            (Some(name), Some(_)) => {
                finding(
                    out,
                    Rule::BadCommand,
                    Severity::Error,
                    "",
                    "one of 'execute' and 'exec-oob'",
                    "both",
                );
                ("execute", name)
            }
            (None, None) => {
                missing(out, "", "member 'execute' or 'exec-oob' (str)");
                ("", &Value::Null)
            }
        };
        for k in m.keys() {
            if !matches!(k.as_str(), "execute" | "exec-oob" | "arguments" | "id") {
                unknown_member(out, "", "only 'execute', 'exec-oob', 'arguments', 'id'", k);
            }
        }
        let args = match m.get("arguments") {
            None => None,
            Some(Value::Object(a)) => Some(a),
            Some(other) => {
                not_an_object(out, "arguments", other);
                return;
            }
        };
        if key.is_empty() {
            return;
        }
        let Value::String(name) = name else {
            wrong_type(out, key, "str", name);
            return;
        };
        let Some(cmd) = self.commands.get(name.as_str()) else {
            finding(
                out,
                Rule::UnknownCommand,
                Severity::Error,
                key,
                "a command of this schema",
                name.clone(),
            );
            return;
        };
        if key == "exec-oob" && !cmd.allow_oob {
            finding(
                out,
                Rule::OobNotAllowed,
                Severity::Error,
                key,
                "a command allowed out-of-band",
                format!("command '{name}'"),
            );
        }
        self.features(out, key, cmd.features, || format!("command '{name}'"));
        let empty = Map::new();
        let mut path = String::from("arguments");
        self.object_or_value(
            cmd.args,
            args.unwrap_or(&empty),
            cmd.open,
            &mut path,
            1,
            out,
        );
    }

    /// Checks a reply to `command`: `{"return": V, "id"?}` with `V` against the command's
    /// return type, or `{"error": {...}, "id"?}` as [`check_error`](Self::check_error) does.
    /// For a command the schema does not know, the return value is not checked (the command
    /// itself was reported), but the reply's shape still is.
    pub fn check_return(&self, command: &str, msg: &Value, out: &mut Vec<Finding>) {
        let from = out.len();
        self.reply(self.commands.get(command), msg, out);
        output_only(out, from);
    }

    /// Checks an error reply: `{"error": {"class": CLASS, "desc": str}, "id"?}` with a class
    /// QEMU sends ([`ERROR_CLASSES`]). A success reply passed here has its shape checked, but
    /// not its value (the command is not known here).
    pub fn check_error(&self, msg: &Value, out: &mut Vec<Finding>) {
        self.reply(None, msg, out);
    }

    /// Checks an event: `{"event": NAME, "data"?: {...}, "timestamp": {"seconds": int,
    /// "microseconds": int}}`. An absent `data` counts as `{}`.
    pub fn check_event(&self, msg: &Value, out: &mut Vec<Finding>) {
        let from = out.len();
        self.event(msg, out);
        output_only(out, from);
    }

    fn event(&self, msg: &Value, out: &mut Vec<Finding>) {
        let Value::Object(m) = msg else {
            not_an_object(out, "", msg);
            return;
        };
        for k in m.keys() {
            if !matches!(k.as_str(), "event" | "data" | "timestamp") {
                unknown_member(out, "", "only 'event', 'data', 'timestamp'", k);
            }
        }
        timestamp(m.get("timestamp"), out);
        let data = match m.get("data") {
            None => None,
            Some(Value::Object(d)) => Some(d),
            Some(other) => {
                not_an_object(out, "data", other);
                return;
            }
        };
        let name = match m.get("event") {
            None => {
                missing(out, "", "member 'event' (str)");
                return;
            }
            Some(Value::String(name)) => name,
            Some(other) => {
                wrong_type(out, "event", "str", other);
                return;
            }
        };
        let Some(event) = self.events.get(name.as_str()) else {
            finding(
                out,
                Rule::UnknownEvent,
                Severity::Error,
                "event",
                "an event of this schema",
                name.clone(),
            );
            return;
        };
        self.features(out, "event", event.features, || format!("event '{name}'"));
        let empty = Map::new();
        let mut path = String::from("data");
        self.object_or_value(event.args, data.unwrap_or(&empty), false, &mut path, 1, out);
    }

    /// Checks `value` against the type named `type_name`, reporting findings at `path` and
    /// below (`path` is extended while descending and restored before returning). A name the
    /// schema does not have gives a [`Rule::SchemaError`] finding, except the builtin names
    /// (`str`, `int8`, `any`, ...), which are understood even when the schema lacks them.
    pub fn check_value(
        &self,
        type_name: &str,
        value: &Value,
        path: &mut String,
        out: &mut Vec<Finding>,
    ) {
        // Array types exist in a schema only where something uses them; `[T]` is understood
        // for any known `T` (brackets peeled without recursion on the name).
        let mut inner = type_name;
        let mut levels = 0;
        while !self.ids.contains_key(inner) && levels < MAX_ARRAY_NAME_NESTING {
            match inner.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                Some(elem) => {
                    inner = elem;
                    levels += 1;
                }
                None => break,
            }
        }
        match self.ids.get(inner) {
            Some(&id) => self.nested_arrays(levels, id, value, path, 0, out),
            None => finding(
                out,
                Rule::SchemaError,
                Severity::Error,
                path,
                format!("type '{}' (not in the schema)", short_name(type_name)),
                describe(value),
            ),
        }
    }

    /// `v` against `levels` nested arrays of type `id` (a `[[T]]` the schema does not have).
    fn nested_arrays(
        &self,
        levels: usize,
        id: Id,
        v: &Value,
        path: &mut String,
        depth: usize,
        out: &mut Vec<Finding>,
    ) {
        if levels == 0 || depth >= MAX_DEPTH {
            self.value(id, v, path, depth, out);
            return;
        }
        let Value::Array(items) = v else {
            wrong_type(out, path, &format!("array of {}", self.label(id)), v);
            return;
        };
        let len = path.len();
        for (i, item) in items.iter().enumerate() {
            let _ = write!(path, "[{i}]");
            self.nested_arrays(levels - 1, id, item, path, depth + 1, out);
            path.truncate(len);
        }
    }

    /// A reply's envelope, its error object, and its return value if `cmd` is known.
    fn reply(&self, cmd: Option<&Command>, msg: &Value, out: &mut Vec<Finding>) {
        let Value::Object(m) = msg else {
            not_an_object(out, "", msg);
            return;
        };
        for k in m.keys() {
            if !matches!(k.as_str(), "return" | "error" | "id") {
                unknown_member(out, "", "only 'return', 'error', 'id'", k);
            }
        }
        let (ret, error) = (m.get("return"), m.get("error"));
        match (ret, error) {
            (Some(_), Some(_)) | (None, None) => finding(
                out,
                Rule::BadReply,
                Severity::Error,
                "",
                "exactly one of 'return' and 'error'",
                if ret.is_some() { "both" } else { "neither" },
            ),
            _ => {}
        }
        if let Some(e) = error {
            error_object(e, out);
        }
        if let (Some(v), Some(cmd)) = (ret, cmd) {
            let mut path = String::from("return");
            self.value(cmd.ret, v, &mut path, 1, out);
        }
    }

    /// Arguments and event data: an object type is checked against `map` (possibly `open`),
    /// anything else (a broken schema) as a value.
    fn object_or_value(
        &self,
        id: Id,
        map: &Map<String, Value>,
        open: bool,
        path: &mut String,
        depth: usize,
        out: &mut Vec<Finding>,
    ) {
        if matches!(self.kind(id), Kind::Object(_)) {
            self.object(id, map, open, path, depth, out);
        } else {
            // Rare enough (only broken schemas) that cloning the map is fine.
            self.value(id, &Value::Object(map.clone()), path, depth, out);
        }
    }

    fn kind(&self, id: Id) -> &Kind<'s> {
        self.types
            .get(id as usize)
            .map_or(&Kind::Undefined, |t| &t.kind)
    }

    fn label(&self, id: Id) -> &str {
        self.types
            .get(id as usize)
            .map_or("?", |t| t.label.as_str())
    }

    /// Reports the use of deprecated or unstable features at `path`.
    fn features(&self, out: &mut Vec<Finding>, path: &str, bits: u8, what: impl Fn() -> String) {
        if bits & (DEPRECATED | UNSTABLE) != 0 {
            self.report_features(out, path, bits, &what());
        }
    }

    #[cold]
    #[inline(never)]
    fn report_features(&self, out: &mut Vec<Finding>, path: &str, bits: u8, what: &str) {
        for (bit, deny, rule, name) in [
            (
                DEPRECATED,
                self.policy.deny_deprecated,
                Rule::Deprecated,
                "deprecated",
            ),
            (
                UNSTABLE,
                self.policy.deny_unstable,
                Rule::Unstable,
                "unstable",
            ),
        ] {
            if bits & bit != 0 {
                let severity = if deny {
                    Severity::Error
                } else {
                    Severity::Warning
                };
                finding(
                    out,
                    rule,
                    severity,
                    path,
                    format!("no {name} use"),
                    format!("{what} ({name})"),
                );
            }
        }
    }

    /// The core: `v` against type `id` at `path`, `depth` levels down.
    fn value(&self, id: Id, v: &Value, path: &mut String, depth: usize, out: &mut Vec<Finding>) {
        if depth >= MAX_DEPTH {
            too_deep(out, path);
            return;
        }
        let ok = match (self.kind(id), v) {
            (Kind::Any, _)
            | (Kind::Str, Value::String(_))
            | (Kind::Number, Value::Number(_))
            | (Kind::Bool, Value::Bool(_))
            | (Kind::Null, Value::Null)
            | (Kind::AnyObject, Value::Object(_))
            | (Kind::AnyArray, Value::Array(_)) => true,
            (&Kind::Int { min, max, wraps }, Value::Number(n)) => {
                self.int(id, min, max, wraps, n, path, out);
                true
            }
            (Kind::Enum(e), Value::String(s)) => {
                match e.index.get(s.as_str()) {
                    Some(&bits) => self.features(out, path, bits, || format!("value '{s}'")),
                    None => bad_enum_value(out, path, &e.values, s),
                }
                true
            }
            (&Kind::Array(elem), Value::Array(items)) => {
                let len = path.len();
                for (i, item) in items.iter().enumerate() {
                    let _ = write!(path, "[{i}]");
                    self.value(elem, item, path, depth + 1, out);
                    path.truncate(len);
                }
                true
            }
            (Kind::Object(_), Value::Object(map)) => {
                self.object(id, map, false, path, depth, out);
                true
            }
            (Kind::Alternate(alt), _) => {
                let branch = match v {
                    Value::String(_) => alt.string,
                    Value::Number(_) => alt.number,
                    Value::Bool(_) => alt.boolean,
                    Value::Null => alt.null,
                    Value::Object(_) => alt.object,
                    Value::Array(_) => alt.array,
                }
                .or(alt.any);
                if let Some(b) = branch {
                    self.value(b, v, path, depth + 1, out);
                } else {
                    self.no_alternate_match(id, alt, v, path, out);
                }
                true
            }
            (Kind::Undefined | Kind::Pending | Kind::NotAType, _) => {
                self.not_a_type(id, v, path, out);
                true
            }
            _ => false,
        };
        if !ok {
            wrong_type(out, path, self.label(id), v);
        }
    }

    #[cold]
    #[inline(never)]
    fn no_alternate_match(
        &self,
        id: Id,
        alt: &AltTy,
        v: &Value,
        path: &str,
        out: &mut Vec<Finding>,
    ) {
        let labels: Vec<&str> = alt.branches.iter().map(|&b| self.label(b)).collect();
        finding(
            out,
            Rule::NoAlternateMatch,
            Severity::Error,
            path,
            format!("{} ({})", self.label(id), one_of(&labels)),
            describe(v),
        );
    }

    /// A value meets a type the schema does not define, or a command or event used as a type.
    #[cold]
    #[inline(never)]
    fn not_a_type(&self, id: Id, v: &Value, path: &str, out: &mut Vec<Finding>) {
        let expected = if matches!(self.kind(id), Kind::NotAType) {
            format!("a type, not {}", self.label(id))
        } else {
            format!("type '{}' (undefined in the schema)", self.label(id))
        };
        finding(
            out,
            Rule::SchemaError,
            Severity::Error,
            path,
            expected,
            describe(v),
        );
    }

    #[allow(clippy::too_many_arguments)] // the range travels unpacked to keep `Kind` matching simple
    #[inline(never)]
    fn int(
        &self,
        id: Id,
        min: i128,
        max: i128,
        wraps: bool,
        n: &serde_json::Number,
        path: &str,
        out: &mut Vec<Finding>,
    ) {
        let x = if let Some(i) = n.as_i64() {
            i128::from(i)
        } else if let Some(u) = n.as_u64() {
            i128::from(u)
        } else {
            // A float: QEMU's input visitor takes no float for an integer (not even 1.0), but
            // an integer literal too big for 64 bits is also parsed as a float.
            let huge = n
                .as_f64()
                .is_some_and(|f| f.abs() >= 9_223_372_036_854_775_808.0);
            if huge {
                out_of_range(
                    out,
                    path,
                    self.label(id),
                    min,
                    max,
                    n.to_string(),
                    Severity::Error,
                );
            } else {
                wrong_type_text(
                    out,
                    path,
                    self.label(id),
                    format!("a floating-point number {n}"),
                );
            }
            return;
        };
        if x >= min && x <= max {
            return;
        }
        if wraps && x < 0 {
            // QEMU's uint64 visitor accepts int64 values "for backward compatibility" and
            // wraps them: accepted, but hardly meant.
            let wrapped = x + (i128::from(u64::MAX) + 1);
            out_of_range(
                out,
                path,
                self.label(id),
                min,
                max,
                format!("{x} (QEMU accepts it as {wrapped})"),
                Severity::Warning,
            );
        } else {
            out_of_range(
                out,
                path,
                self.label(id),
                min,
                max,
                x.to_string(),
                Severity::Error,
            );
        }
    }

    /// An object of type `id` (a struct or a union, flattened): members present are checked,
    /// mandatory members must be present, others must not. `open`: members outside the type
    /// are accepted ([`OPEN_ARGUMENT_COMMANDS`]).
    ///
    /// This and [`value`](Self::value) recurse once per level of the value, so they keep their
    /// frames small: everything that only runs to report a finding is outlined.
    fn object(
        &self,
        id: Id,
        map: &Map<String, Value>,
        open: bool,
        path: &mut String,
        depth: usize,
        out: &mut Vec<Finding>,
    ) {
        let layers = self.layers(id, map, path, out);
        let len = path.len();
        let mut required_seen = 0;
        let mut unknown = false;
        for (key, v) in map {
            let Some(member) = layers.member(key) else {
                unknown |= !open;
                continue;
            };
            if !member.optional {
                required_seen += 1;
            }
            push_key(path, key);
            self.features(out, path, member.features, || format!("member '{key}'"));
            self.value(member.ty, v, path, depth + 1, out);
            path.truncate(len);
        }
        if unknown {
            self.report_unknown(id, &layers, map, path, out);
        }
        if required_seen < layers.required() {
            self.report_missing(&layers, map, path, out);
        }
    }

    /// The object types that apply to `map` as a value of `id`: the type, the variant its tag
    /// selects, that variant's selected variant if it is a union too, and so on.
    #[inline(never)]
    fn layers<'c>(
        &'c self,
        id: Id,
        map: &Map<String, Value>,
        path: &str,
        out: &mut Vec<Finding>,
    ) -> Layers<'c, 's> {
        let mut layers = Layers {
            objs: [None; MAX_UNION_NESTING],
            count: 0,
            undecided: None,
        };
        let mut current = id;
        loop {
            let Kind::Object(obj) = self.kind(current) else {
                finding(
                    out,
                    Rule::SchemaError,
                    Severity::Error,
                    path,
                    format!(
                        "an object type as union variant, not {}",
                        self.label(current)
                    ),
                    describe_map(map),
                );
                break;
            };
            let Some(slot) = layers.objs.get_mut(layers.count) else {
                finding(
                    out,
                    Rule::SchemaError,
                    Severity::Error,
                    path,
                    format!("unions nested at most {MAX_UNION_NESTING} deep"),
                    format!("deeper nesting at {}", self.label(current)),
                );
                break;
            };
            *slot = Some(obj);
            layers.count += 1;
            let Some((tag, tag_ty)) = obj.tag else {
                break;
            };
            let Some(Value::String(case)) = map.get(tag) else {
                layers.undecided = Some(obj);
                break;
            };
            let variant = obj.variants.get(case.as_str());
            // No variant: fine for a value of the tag's enum (an empty branch), undecided for a
            // value outside it (reported when the tag member is checked).
            let valid = variant.is_some()
                || match tag_ty.map(|t| self.kind(t)) {
                    Some(Kind::Enum(e)) => e.index.contains_key(case.as_str()),
                    _ => true,
                };
            if !valid {
                layers.undecided = Some(obj);
                break;
            }
            match variant {
                Some(&variant) => current = variant,
                None => break,
            }
        }
        layers
    }

    /// Reports the members of `map` that no layer has. Members of some variant of an
    /// undecided union are not reported: which variant applies is unknown.
    #[cold]
    #[inline(never)]
    fn report_unknown(
        &self,
        id: Id,
        layers: &Layers<'_, 's>,
        map: &Map<String, Value>,
        path: &str,
        out: &mut Vec<Finding>,
    ) {
        let mut expected = None;
        for key in map.keys() {
            if layers.member(key).is_some()
                || layers
                    .undecided
                    .is_some_and(|u| self.in_some_variant(u, key))
            {
                continue;
            }
            let expected = expected.get_or_insert_with(|| self.members_of(id, layers, map));
            unknown_member(out, path, expected, key);
        }
    }

    /// Reports the mandatory members of the layers that `map` lacks.
    #[cold]
    #[inline(never)]
    fn report_missing(
        &self,
        layers: &Layers<'_, 's>,
        map: &Map<String, Value>,
        path: &str,
        out: &mut Vec<Finding>,
    ) {
        for obj in layers.iter() {
            for m in obj.members.iter().filter(|m| !m.optional) {
                if !map.contains_key(m.name) {
                    missing(
                        out,
                        path,
                        &format!("member '{}' ({})", m.name, self.label(m.ty)),
                    );
                }
            }
        }
    }

    /// What an object of type `id` may hold, for an unknown member's finding:
    /// `"a member of object BlockdevOptions (driver 'qcow2')"`, or `"no members (object
    /// q_empty)"`.
    fn members_of(&self, id: Id, layers: &Layers<'_, 's>, map: &Map<String, Value>) -> String {
        if layers.iter().all(|o| o.members.is_empty()) {
            return format!("no members ({})", self.label(id));
        }
        let mut s = format!("a member of {}", self.label(id));
        // The tag values that chose the variants (an undecided union's chose none).
        let mut first = true;
        for obj in layers.iter() {
            let decided = !layers.undecided.is_some_and(|u| std::ptr::eq(u, obj));
            if let Some((tag, _)) = obj.tag
                && decided
                && let Some(Value::String(case)) = map.get(tag)
            {
                s.push_str(if first { " (" } else { ", " });
                first = false;
                let _ = write!(s, "{tag} {}", quote_name(case));
            }
        }
        if !first {
            s.push(')');
        }
        s
    }

    /// Whether `key` is a member of some variant of union `obj` (one level: enough to keep an
    /// undecided union from flooding the report).
    fn in_some_variant(&self, obj: &ObjTy<'s>, key: &str) -> bool {
        obj.variants.values().any(|&v| match self.kind(v) {
            Kind::Object(o) => o.index.contains_key(key),
            _ => false,
        })
    }
}

/// Builds the type table of a [`Checker`].
struct Builder<'s> {
    types: Vec<Ty<'s>>,
    ids: FxMap<&'s str, Id>,
    /// The schema has one `int` for all integer widths (introspection).
    collapsed: bool,
}

impl<'s> Builder<'s> {
    fn push(&mut self, label: String, kind: Kind<'s>) -> Id {
        self.types.push(Ty { label, kind });
        // More than 4 billion types cannot come from a schema that fits in memory as entities
        // plus references; saturating keeps the arithmetic total anyway.
        u32::try_from(self.types.len() - 1).unwrap_or(u32::MAX)
    }

    fn builtin_kind(&self, name: &str, json_type: JsonType) -> Kind<'s> {
        // A known name decides (it carries the integer width); otherwise the JSON type does.
        let json_type = BUILTIN_TYPES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(json_type, |&(_, t)| t);
        match json_type {
            JsonType::String => Kind::Str,
            JsonType::Number => Kind::Number,
            JsonType::Int => {
                let (min, max, wraps) = int_range(name, self.collapsed);
                Kind::Int { min, max, wraps }
            }
            JsonType::Boolean => Kind::Bool,
            JsonType::Null => Kind::Null,
            JsonType::Object => Kind::AnyObject,
            JsonType::Array => Kind::AnyArray,
            JsonType::Value => Kind::Any,
        }
    }

    /// The index of type `name`; a name no entity has becomes an undefined type, or an array
    /// type if it is written `[T]` (hand-made schemas may leave arrays implicit).
    fn resolve(&mut self, name: &'s str) -> Id {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        // Peel `[...]` iteratively (a hostile name could nest brackets deeply), then build the
        // array types from the inside out.
        let mut inner = name;
        let mut wrappers = Vec::new();
        while let Some(elem) = inner.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if wrappers.len() == MAX_ARRAY_NAME_NESTING {
                // Each level costs a lookup of the whole name: give up rather than go quadratic.
                inner = name;
                wrappers.clear();
                break;
            }
            wrappers.push(inner);
            inner = elem;
            if self.ids.contains_key(inner) {
                break;
            }
        }
        let mut id = if let Some(&id) = self.ids.get(inner) {
            id
        } else {
            let id = self.push(short_name(inner), Kind::Undefined);
            self.ids.insert(inner, id);
            id
        };
        for wrapper in wrappers.into_iter().rev() {
            let array = self.push(format!("array {}", short_name(wrapper)), Kind::Array(id));
            self.ids.insert(wrapper, array);
            id = array;
        }
        id
    }
}

/// The event timestamp: `{"seconds": int, "microseconds": int}`, microseconds within a second
/// (or -1 with seconds -1, QEMU's "host time unavailable").
fn timestamp(ts: Option<&Value>, out: &mut Vec<Finding>) {
    const SHAPE: &str = "{\"seconds\": int, \"microseconds\": int}";
    let ts = match ts {
        None => {
            missing(out, "", &format!("member 'timestamp' ({SHAPE})"));
            return;
        }
        Some(Value::Object(ts)) => ts,
        Some(other) => {
            wrong_type(out, "timestamp", SHAPE, other);
            return;
        }
    };
    for k in ts.keys() {
        if !matches!(k.as_str(), "seconds" | "microseconds") {
            unknown_member(out, "timestamp", "only 'seconds', 'microseconds'", k);
        }
    }
    for (key, path, min, max) in [
        ("seconds", "timestamp.seconds", i64::MIN, i64::MAX),
        ("microseconds", "timestamp.microseconds", -1, 999_999),
    ] {
        match ts.get(key) {
            None => missing(out, "timestamp", &format!("member '{key}' (int)")),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(x) if (min..=max).contains(&x) => {}
                Some(x) => out_of_range(
                    out,
                    path,
                    "int",
                    min.into(),
                    max.into(),
                    x.to_string(),
                    Severity::Error,
                ),
                None if n.is_u64() => out_of_range(
                    out,
                    path,
                    "int",
                    min.into(),
                    max.into(),
                    n.to_string(),
                    Severity::Error,
                ),
                None => wrong_type(out, path, "int", &Value::Number(n.clone())),
            },
            Some(other) => wrong_type(out, path, "int", other),
        }
    }
}

/// An error reply's `error` member.
fn error_object(e: &Value, out: &mut Vec<Finding>) {
    let Value::Object(e) = e else {
        wrong_type(out, "error", "{\"class\": str, \"desc\": str}", e);
        return;
    };
    for k in e.keys() {
        if !matches!(k.as_str(), "class" | "desc") {
            unknown_member(out, "error", "only 'class', 'desc'", k);
        }
    }
    match e.get("class") {
        None => missing(out, "error", "member 'class' (str)"),
        Some(Value::String(class)) => {
            if !ERROR_CLASSES.contains(&class.as_str()) {
                finding(
                    out,
                    Rule::UnknownErrorClass,
                    Severity::Error,
                    "error.class",
                    one_of(ERROR_CLASSES),
                    class.clone(),
                );
            }
        }
        Some(other) => wrong_type(out, "error.class", "str", other),
    }
    match e.get("desc") {
        None => missing(out, "error", "member 'desc' (str)"),
        Some(Value::String(_)) => {}
        Some(other) => wrong_type(out, "error.desc", "str", other),
    }
}

#[cold]
#[inline(never)]
fn finding(
    out: &mut Vec<Finding>,
    rule: Rule,
    severity: Severity,
    path: &str,
    expected: impl Into<String>,
    found: impl Into<String>,
) {
    out.push(Finding {
        rule,
        severity,
        path: path.to_owned(),
        expected: expected.into(),
        found: found.into(),
    });
}

#[cold]
#[inline(never)]
fn too_deep(out: &mut Vec<Finding>, path: &str) {
    finding(
        out,
        Rule::TooDeep,
        Severity::Error,
        path,
        format!("nesting at most {MAX_DEPTH} levels deep"),
        "deeper nesting",
    );
}

#[cold]
#[inline(never)]
fn bad_enum_value(out: &mut Vec<Finding>, path: &str, values: &[&str], s: &str) {
    finding(
        out,
        Rule::BadEnumValue,
        Severity::Error,
        path,
        one_of(values),
        quote(s),
    );
}

#[cold]
#[inline(never)]
fn not_an_object(out: &mut Vec<Finding>, path: &str, v: &Value) {
    finding(
        out,
        Rule::NotAnObject,
        Severity::Error,
        path,
        "a JSON object",
        describe(v),
    );
}

#[cold]
#[inline(never)]
fn missing(out: &mut Vec<Finding>, path: &str, expected: &str) {
    finding(
        out,
        Rule::MissingMember,
        Severity::Error,
        path,
        expected,
        "nothing",
    );
}

#[cold]
#[inline(never)]
fn unknown_member(out: &mut Vec<Finding>, path: &str, expected: &str, key: &str) {
    finding(
        out,
        Rule::UnknownMember,
        Severity::Error,
        path,
        expected,
        format!("member {}", quote_name(key)),
    );
}

#[cold]
#[inline(never)]
fn wrong_type(out: &mut Vec<Finding>, path: &str, expected: &str, v: &Value) {
    wrong_type_text(out, path, expected, describe(v));
}

#[cold]
#[inline(never)]
fn wrong_type_text(out: &mut Vec<Finding>, path: &str, expected: &str, found: String) {
    finding(out, Rule::WrongType, Severity::Error, path, expected, found);
}

#[cold]
#[inline(never)]
fn out_of_range(
    out: &mut Vec<Finding>,
    path: &str,
    label: &str,
    min: i128,
    max: i128,
    found: String,
    severity: Severity,
) {
    finding(
        out,
        Rule::OutOfRange,
        severity,
        path,
        format!("{label} ({min}..={max})"),
        found,
    );
}

/// Appends member `key` to `path` (see the module documentation for the syntax).
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&json_string(key));
        path.push(']');
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// A string value for a finding: JSON-quoted, cut after [`MAX_QUOTED_CHARS`] characters.
fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", json_string(s.get(..cut).unwrap_or_default())),
        None => json_string(s),
    }
}

/// A member name in a finding: `'name'`, or JSON-quoted if it is long or odd.
fn quote_name(key: &str) -> String {
    if key.len() <= MAX_QUOTED_CHARS && key.bytes().all(|b| b.is_ascii_graphic() && b != b'\'') {
        format!("'{key}'")
    } else {
        quote(key)
    }
}

/// A type name for labels, cut after [`MAX_QUOTED_CHARS`] characters (a hostile schema's names
/// could be megabytes long).
fn short_name(name: &str) -> String {
    match name.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", name.get(..cut).unwrap_or_default()),
        None => name.to_owned(),
    }
}

/// "one of: a, b, c", cut after [`MAX_LISTED_VALUES`] values.
fn one_of<S: AsRef<str>>(values: &[S]) -> String {
    let mut s = String::from("one of: ");
    for (i, v) in values.iter().take(MAX_LISTED_VALUES).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(v.as_ref());
    }
    if values.len() > MAX_LISTED_VALUES {
        let _ = write!(s, ", … ({} in all)", values.len());
    }
    s
}

/// A value's JSON type and a glimpse of it, for `found`.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("a boolean {b}"),
        Value::Number(n) => format!("a number {n}"),
        Value::String(s) => format!("a string {}", quote(s)),
        Value::Array(a) => match a.len() {
            1 => "an array of 1 element".to_owned(),
            n => format!("an array of {n} elements"),
        },
        Value::Object(m) => describe_map(m),
    }
}

fn describe_map(m: &Map<String, Value>) -> String {
    match m.len() {
        1 => "an object with 1 member".to_owned(),
        n => format!("an object with {n} members"),
    }
}

/// Rotate-xor-multiply hashing as in rustc's `FxHasher`: the keys are short
/// names, for which std's `SipHash` costs more than the rest of a lookup. Flooding is no
/// concern: the tables are built from the schema, and probing them with hostile keys costs no
/// more than the schema's own collisions allow.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            if let Some(dst) = word.get_mut(..rest.len()) {
                dst.copy_from_slice(rest);
            }
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests;
