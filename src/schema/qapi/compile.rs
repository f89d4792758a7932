//! QAPI expressions to the [`Schema`] model, the way QEMU's introspection generator sees them:
//! bases flattened, implicit types (`q_obj_*`, `q_empty`, `[T]`) made explicit, but with real
//! type names and every `if` kept (nothing is evaluated).
//!
//! Two passes: [`collect`] checks each expression's shape (keys, value types, names) and turns
//! it into a [`Def`]; [`Compiler`] then resolves names across definitions (undefined or
//! misused types, bases, discriminators, branches) and builds the entities. Nothing here
//! recurses on the input except [`cond`], whose depth the parser already caps.

use std::collections::{HashMap, HashSet};

use super::{Dict, Expr, Node, Pos, QapiError, Value};
use crate::schema::model::{
    BUILTIN_TYPES, Cond, Entity, EnumValue, JsonType, Member, Meta, Schema, Variant,
};

/// The builtin enum of `QObject` types (used by alternates in C) and its values.
const QTYPE: &str = "QType";
const QTYPE_VALUES: &[&str] = &[
    "none", "qnull", "qnum", "qstring", "qdict", "qlist", "qbool",
];

/// The implicit empty object: arguments of commands and events without data, result of
/// commands without `returns`.
const EMPTY: &str = "q_empty";

/// Most member copies flattening may make (bases into structs, bases into unions, members
/// checked for clashes). The model stores every struct's members flattened, so a long base
/// chain costs the square of its length; QEMU 9.1 needs about 3,000 of these; the cap
/// keeps hostile schemas from taking unbounded time and memory.
pub const MAX_FLATTEN_WORK: usize = 1 << 18;

/// The definition keywords, in the order QEMU looks for them.
const METAS: &[&str] = &["enum", "struct", "union", "alternate", "command", "event"];

/// Compiles expressions (includes already expanded) into a schema.
///
/// `include` directives still present are checked and ignored; `pragma`s are checked and
/// ignored.
pub fn compile(exprs: &[Expr]) -> Result<Schema, QapiError> {
    let defs = collect(exprs)?;
    Compiler::new(&defs)?.run()
}

fn err<T>(pos: &Pos, message: impl Into<String>) -> Result<T, QapiError> {
    Err(QapiError::Schema {
        pos: pos.clone(),
        message: message.into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Pass 1: shapes.

/// A reference to a type: `'T'` or `['T']`.
#[derive(Debug, Clone)]
struct TypeRef {
    name: String,
    array: bool,
    pos: Pos,
}

/// An object member as written (`'*name': TYPEREF` or `{'type': ..., 'if', 'features'}`).
#[derive(Debug, Clone)]
struct MemberDef {
    name: String,
    pos: Pos,
    optional: bool,
    ty: TypeRef,
    features: Vec<String>,
    cond: Option<Cond>,
}

/// A union or alternate branch.
#[derive(Debug, Clone)]
struct Branch {
    name: String,
    pos: Pos,
    ty: TypeRef,
    cond: Option<Cond>,
}

/// `data` of a command or event.
#[derive(Debug)]
enum Data {
    Absent,
    Members(Vec<MemberDef>),
    Named(TypeRef),
}

/// `base` of a flat union.
#[derive(Debug)]
enum UnionBase {
    Named(TypeRef),
    Members(Vec<MemberDef>),
}

#[derive(Debug)]
enum Body {
    Enum(Vec<EnumValue>),
    Struct {
        base: Option<TypeRef>,
        members: Vec<MemberDef>,
    },
    FlatUnion {
        base: UnionBase,
        discriminator: String,
        discriminator_pos: Pos,
        branches: Vec<Branch>,
    },
    /// A pre-6.2 union without base: `{'type': CASE, 'data': VALUE}` on the wire.
    SimpleUnion {
        branches: Vec<Branch>,
    },
    Alternate(Vec<Branch>),
    Command {
        data: Data,
        returns: Option<TypeRef>,
        allow_oob: bool,
    },
    Event {
        data: Data,
    },
}

/// A definition whose shape has been checked.
#[derive(Debug)]
struct Def {
    name: String,
    /// The name's value (for duplicate-definition errors).
    name_pos: Pos,
    /// The whole expression.
    pos: Pos,
    features: Vec<String>,
    cond: Option<Cond>,
    /// `'boxed': true` (commands and events).
    boxed: bool,
    body: Body,
}

fn collect(exprs: &[Expr]) -> Result<Vec<Def>, QapiError> {
    let mut defs = Vec::new();
    for expr in exprs {
        let d = &expr.dict;
        if let Some(node) = d.get("include") {
            check_keys(d, "include", &["include"], &[])?;
            as_str(node, "'include'")?;
        } else if let Some(node) = d.get("pragma") {
            check_keys(d, "pragma", &["pragma"], &[])?;
            check_pragma(node)?;
        } else if let Some(meta) = METAS.iter().copied().find(|m| d.get(m).is_some()) {
            defs.push(definition(expr, meta)?);
        } else {
            return err(
                &expr.pos,
                format!(
                    "expression has no definition keyword (one of {}, or include, pragma)",
                    METAS.join(", ")
                ),
            );
        }
    }
    Ok(defs)
}

/// Checks that `dict` has every key of `required` and no key outside `required` and `optional`.
fn check_keys(
    dict: &Dict,
    what: &str,
    required: &[&str],
    optional: &[&str],
) -> Result<(), QapiError> {
    for (key, _) in &dict.entries {
        let k = key.name.as_str();
        if !required.contains(&k) && !optional.contains(&k) {
            let mut valid: Vec<&str> = required.iter().chain(optional).copied().collect();
            valid.sort_unstable();
            return err(
                &key.pos,
                format!(
                    "{what} has unknown key '{k}' (valid keys: {})",
                    valid.join(", ")
                ),
            );
        }
    }
    Ok(())
}

/// Like [`check_keys`], and reports a missing required key at `pos`.
fn check_keys_at(
    dict: &Dict,
    pos: &Pos,
    what: &str,
    required: &[&str],
    optional: &[&str],
) -> Result<(), QapiError> {
    check_keys(dict, what, required, optional)?;
    if let Some(missing) = required.iter().find(|k| dict.get(k).is_none()) {
        return err(pos, format!("{what} is missing key '{missing}'"));
    }
    Ok(())
}

fn as_str<'a>(node: &'a Node, what: &str) -> Result<&'a str, QapiError> {
    match &node.value {
        Value::Str(s) => Ok(s),
        other => err(
            &node.pos,
            format!("{what} must be a string, not {}", other.kind()),
        ),
    }
}

fn as_bool(node: &Node, what: &str) -> Result<bool, QapiError> {
    match node.value {
        Value::Bool(b) => Ok(b),
        ref other => err(
            &node.pos,
            format!("{what} must be true or false, not {}", other.kind()),
        ),
    }
}

fn as_list<'a>(node: &'a Node, what: &str) -> Result<&'a [Node], QapiError> {
    match &node.value {
        Value::List(l) => Ok(l),
        other => err(
            &node.pos,
            format!("{what} must be a list, not {}", other.kind()),
        ),
    }
}

fn as_dict<'a>(node: &'a Node, what: &str) -> Result<&'a Dict, QapiError> {
    match &node.value {
        Value::Dict(d) => Ok(d),
        other => err(
            &node.pos,
            format!("{what} must be an object, not {}", other.kind()),
        ),
    }
}

fn check_pragma(node: &Node) -> Result<(), QapiError> {
    const LISTS: &[&str] = &[
        "command-name-exceptions",
        "command-returns-exceptions",
        "documentation-exceptions",
        "member-name-exceptions",
    ];
    let dict = as_dict(node, "'pragma'")?;
    for (key, value) in &dict.entries {
        let k = key.name.as_str();
        if k == "doc-required" {
            as_bool(value, "pragma 'doc-required'")?;
        } else if LISTS.contains(&k) {
            for item in as_list(value, &format!("pragma '{k}'"))? {
                as_str(item, &format!("an element of pragma '{k}'"))?;
            }
        } else {
            return err(&key.pos, format!("unknown pragma '{k}'"));
        }
    }
    Ok(())
}

/// Checks a name's characters: an optional vendor prefix `__RFQDN_`, then a letter (or, for
/// enum values, a digit too), then letters, digits, `-` and `_` (and `.` in enum values).
fn check_name(name: &str, pos: &Pos, what: &str, enum_value: bool) -> Result<(), QapiError> {
    let mut rest = name;
    if let Some(after) = name.strip_prefix("__") {
        // Vendor extensions look like `__com.redhat_foo`.
        if let Some(end) = after.find('_') {
            let vendor = after.get(..end).unwrap_or("");
            if !vendor.is_empty()
                && vendor
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            {
                rest = after.get(end + 1..).unwrap_or("");
            }
        }
    }
    let mut chars = rest.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || (enum_value && c.is_ascii_digit()));
    let rest_ok = chars
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_') || (enum_value && c == '.'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        err(pos, format!("{what} has an invalid name '{name}'"))
    }
}

/// Checks a definition name: valid characters, and not one of the reserved forms.
fn check_def_name(name: &str, pos: &Pos, meta: &str) -> Result<(), QapiError> {
    check_name(name, pos, meta, false)?;
    if name.starts_with("q_") {
        // Implicit types are named q_obj_..., q_empty.
        return err(
            pos,
            format!("{meta} name '{name}' uses the reserved prefix 'q_'"),
        );
    }
    if !matches!(meta, "command" | "event") && name.ends_with("List") {
        // The C generator names array types TList.
        return err(pos, format!("{meta} name '{name}' must not end in 'List'"));
    }
    Ok(())
}

/// `'if'`: a symbol, or `{'all': [...]}`, `{'any': [...]}`, `{'not': COND}`.
fn cond(node: &Node) -> Result<Cond, QapiError> {
    match &node.value {
        Value::Str(s) => {
            let mut chars = s.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if ok {
                Ok(Cond::Symbol(s.clone()))
            } else {
                err(
                    &node.pos,
                    format!("'if' condition '{s}' is not a valid identifier"),
                )
            }
        }
        Value::Dict(d) => {
            let [(key, value)] = d.entries.as_slice() else {
                return err(
                    &node.pos,
                    "'if' condition must have exactly one key: 'all', 'any' or 'not'",
                );
            };
            match key.name.as_str() {
                op @ ("all" | "any") => {
                    let items = as_list(value, &format!("'if' condition '{op}'"))?;
                    if items.is_empty() {
                        return err(&value.pos, format!("'if' condition '{op}' is empty"));
                    }
                    let conds = items.iter().map(cond).collect::<Result<Vec<_>, _>>()?;
                    Ok(if op == "all" {
                        Cond::All { all: conds }
                    } else {
                        Cond::Any { any: conds }
                    })
                }
                "not" => Ok(Cond::Not {
                    not: Box::new(cond(value)?),
                }),
                other => err(
                    &key.pos,
                    format!("unknown 'if' operator '{other}' (expected 'all', 'any' or 'not')"),
                ),
            }
        }
        other => err(
            &node.pos,
            format!("'if' must be a string or an object, not {}", other.kind()),
        ),
    }
}

fn opt_cond(dict: &Dict) -> Result<Option<Cond>, QapiError> {
    dict.get("if").map(cond).transpose()
}

/// `'features'`: names or `{'name': ..., 'if': ...}` (the condition is checked, then dropped:
/// the model keeps feature names only).
fn features(dict: &Dict) -> Result<Vec<String>, QapiError> {
    let Some(node) = dict.get("features") else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for item in as_list(node, "'features'")? {
        let name = match &item.value {
            Value::Str(s) => s.clone(),
            Value::Dict(d) => {
                check_keys_at(d, &item.pos, "feature", &["name"], &["if"])?;
                opt_cond(d)?;
                as_str(d.get("name").unwrap_or(item), "feature 'name'")?.to_owned()
            }
            other => {
                return err(
                    &item.pos,
                    format!(
                        "a feature must be a string or an object, not {}",
                        other.kind()
                    ),
                );
            }
        };
        check_name(&name, &item.pos, "feature", false)?;
        if !seen.insert(name.clone()) {
            return err(&item.pos, format!("duplicate feature '{name}'"));
        }
        names.push(name);
    }
    Ok(names)
}

/// A type reference: `'T'` or `['T']`.
fn type_ref(node: &Node, what: &str) -> Result<TypeRef, QapiError> {
    match &node.value {
        Value::Str(s) => Ok(TypeRef {
            name: s.clone(),
            array: false,
            pos: node.pos.clone(),
        }),
        Value::List(items) => match items.as_slice() {
            [
                Node {
                    value: Value::Str(s),
                    pos,
                },
            ] => Ok(TypeRef {
                name: s.clone(),
                array: true,
                pos: pos.clone(),
            }),
            _ => err(
                &node.pos,
                format!("{what} must be a type name or a list of exactly one type name"),
            ),
        },
        other => err(
            &node.pos,
            format!(
                "{what} must be a type name or ['type name'], not {}",
                other.kind()
            ),
        ),
    }
}

/// A type name (no array).
fn type_name(node: &Node, what: &str) -> Result<TypeRef, QapiError> {
    Ok(TypeRef {
        name: as_str(node, what)?.to_owned(),
        array: false,
        pos: node.pos.clone(),
    })
}

/// Members: `{ '*opt': TYPEREF, 'name': TYPEREF | {'type', 'if'?, 'features'?} }`.
fn members(node: &Node, what: &str) -> Result<Vec<MemberDef>, QapiError> {
    let dict = as_dict(node, what)?;
    let mut out: Vec<MemberDef> = Vec::new();
    // Sets rather than scans: hostile input may have many members.
    let mut seen: HashSet<&str> = HashSet::new();
    for (key, value) in &dict.entries {
        let (name, optional) = match key.name.strip_prefix('*') {
            Some(n) => (n, true),
            None => (key.name.as_str(), false),
        };
        check_name(name, &key.pos, "member", false)?;
        if !seen.insert(name) {
            return err(&key.pos, format!("duplicate member '{name}'"));
        }
        let (ty, features, cond) = match &value.value {
            Value::Dict(d) => {
                check_keys_at(d, &value.pos, "member", &["type"], &["if", "features"])?;
                let ty = type_ref(d.get("type").unwrap_or(value), "member 'type'")?;
                (ty, features(d)?, opt_cond(d)?)
            }
            _ => (type_ref(value, "member type")?, Vec::new(), None),
        };
        out.push(MemberDef {
            name: name.to_owned(),
            pos: key.pos.clone(),
            optional,
            ty,
            features,
            cond,
        });
    }
    Ok(out)
}

/// Branches: `{ 'name': TYPEREF | {'type', 'if'?} }`.
fn branches(node: &Node, what: &str, enum_like: bool) -> Result<Vec<Branch>, QapiError> {
    let dict = as_dict(node, what)?;
    let mut out = Vec::new();
    for (key, value) in &dict.entries {
        check_name(&key.name, &key.pos, "branch", enum_like)?;
        let (ty, cond) = match &value.value {
            Value::Dict(d) => {
                check_keys_at(d, &value.pos, "branch", &["type"], &["if"])?;
                (
                    type_ref(d.get("type").unwrap_or(value), "branch 'type'")?,
                    opt_cond(d)?,
                )
            }
            _ => (type_ref(value, "branch type")?, None),
        };
        out.push(Branch {
            name: key.name.clone(),
            pos: key.pos.clone(),
            ty,
            cond,
        });
    }
    Ok(out)
}

fn enum_values(node: &Node) -> Result<Vec<EnumValue>, QapiError> {
    let mut out: Vec<EnumValue> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for item in as_list(node, "enum 'data'")? {
        let value = match &item.value {
            Value::Str(s) => EnumValue {
                name: s.clone(),
                features: Vec::new(),
                cond: None,
            },
            Value::Dict(d) => {
                check_keys_at(d, &item.pos, "enum value", &["name"], &["if", "features"])?;
                EnumValue {
                    name: as_str(d.get("name").unwrap_or(item), "enum value 'name'")?.to_owned(),
                    features: features(d)?,
                    cond: opt_cond(d)?,
                }
            }
            other => {
                return err(
                    &item.pos,
                    format!(
                        "an enum value must be a string or an object, not {}",
                        other.kind()
                    ),
                );
            }
        };
        check_name(&value.name, &item.pos, "enum value", true)?;
        if !seen.insert(value.name.clone()) {
            return err(&item.pos, format!("duplicate enum value '{}'", value.name));
        }
        out.push(value);
    }
    Ok(out)
}

/// A command's or event's `data`.
fn data(dict: &Dict) -> Result<Data, QapiError> {
    Ok(match dict.get("data") {
        None => Data::Absent,
        Some(
            node @ Node {
                value: Value::Str(_),
                ..
            },
        ) => Data::Named(type_name(node, "'data'")?),
        Some(node) => Data::Members(members(node, "'data'")?),
    })
}

/// Checks `flag`: present, it may only have the value `only`.
fn flag(dict: &Dict, key: &str, only: bool) -> Result<bool, QapiError> {
    let Some(node) = dict.get(key) else {
        return Ok(false);
    };
    if as_bool(node, &format!("'{key}'"))? == only {
        Ok(true)
    } else {
        err(&node.pos, format!("flag '{key}' may only be {only}"))
    }
}

/// Checks boxing: `'boxed': true` needs `data` naming a type.
fn check_boxed(dict: &Dict, data: &Data, pos: &Pos) -> Result<bool, QapiError> {
    let boxed = flag(dict, "boxed", true)?;
    if boxed && !matches!(data, Data::Named(_)) {
        return err(pos, "'boxed': true requires 'data' to name a type");
    }
    Ok(boxed)
}

fn definition(expr: &Expr, meta: &str) -> Result<Def, QapiError> {
    const COMMON: [&str; 2] = ["if", "features"];
    let d = &expr.dict;
    let (optional, required): (&[&str], &[&str]) = match meta {
        "enum" => (&["prefix"], &["enum", "data"]),
        "struct" => (&["base"], &["struct", "data"]),
        "union" => (&["base", "discriminator"], &["union", "data"]),
        "alternate" => (&[], &["alternate", "data"]),
        "command" => (
            &[
                "data",
                "boxed",
                "returns",
                "success-response",
                "gen",
                "allow-oob",
                "allow-preconfig",
                "coroutine",
            ],
            &["command"],
        ),
        _ => (&["data", "boxed"], &["event"]),
    };
    let optional: Vec<&str> = optional.iter().chain(&COMMON).copied().collect();
    let Some(name_node) = d.get(meta) else {
        // `meta` was chosen because the key is present.
        return err(&expr.pos, format!("'{meta}' is missing"));
    };
    let name = as_str(name_node, &format!("'{meta}'"))?.to_owned();
    check_def_name(&name, &name_node.pos, meta)?;
    let what = format!("{meta} '{name}'");
    check_keys_at(d, &expr.pos, &what, required, &optional)?;
    let features = features(d)?;
    let cond = opt_cond(d)?;
    // `check_keys_at` made sure required keys exist; `missing` keeps this panic-free anyway.
    let missing = || QapiError::Schema {
        pos: expr.pos.clone(),
        message: format!("{what} is missing 'data'"),
    };
    let mut boxed = false;
    let body = match meta {
        "enum" => {
            if let Some(prefix) = d.get("prefix") {
                as_str(prefix, "'prefix'")?;
            }
            Body::Enum(enum_values(d.get("data").ok_or_else(missing)?)?)
        }
        "struct" => Body::Struct {
            base: d.get("base").map(|b| type_name(b, "'base'")).transpose()?,
            members: members(d.get("data").ok_or_else(missing)?, "'data'")?,
        },
        "union" => {
            let data = d.get("data").ok_or_else(missing)?;
            match (d.get("base"), d.entry("discriminator")) {
                (None, None) => Body::SimpleUnion {
                    branches: branches(data, "'data'", true)?,
                },
                (Some(base), Some((_, disc))) => Body::FlatUnion {
                    base: match &base.value {
                        Value::Dict(_) => UnionBase::Members(members(base, "'base'")?),
                        _ => UnionBase::Named(type_name(base, "'base'")?),
                    },
                    discriminator: as_str(disc, "'discriminator'")?.to_owned(),
                    discriminator_pos: disc.pos.clone(),
                    branches: branches(data, "'data'", true)?,
                },
                (Some(_), None) => {
                    return err(
                        &expr.pos,
                        format!("{what} has 'base' but no 'discriminator'"),
                    );
                }
                (None, Some((key, _))) => {
                    return err(
                        &key.pos,
                        format!("{what} has 'discriminator' but no 'base'"),
                    );
                }
            }
        }
        "alternate" => {
            let data = d.get("data").ok_or_else(missing)?;
            let branches = branches(data, "'data'", false)?;
            if branches.is_empty() {
                return err(&data.pos, format!("{what} has no branches"));
            }
            Body::Alternate(branches)
        }
        "command" => {
            let data = data(d)?;
            boxed = check_boxed(d, &data, &expr.pos)?;
            flag(d, "success-response", false)?;
            flag(d, "gen", false)?;
            flag(d, "allow-preconfig", true)?;
            flag(d, "coroutine", true)?;
            Body::Command {
                data,
                returns: d
                    .get("returns")
                    .map(|r| type_ref(r, "'returns'"))
                    .transpose()?,
                allow_oob: flag(d, "allow-oob", true)?,
            }
        }
        _ => {
            let data = data(d)?;
            boxed = check_boxed(d, &data, &expr.pos)?;
            Body::Event { data }
        }
    };
    Ok(Def {
        name,
        name_pos: name_node.pos.clone(),
        pos: expr.pos.clone(),
        features,
        cond,
        boxed,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Pass 2: names.

/// What a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Builtin(JsonType),
    Enum,
    Struct,
    Union,
    Alternate,
    Command,
    Event,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Builtin(_) => "a built-in type",
            Kind::Enum => "an enum",
            Kind::Struct => "a struct",
            Kind::Union => "a union",
            Kind::Alternate => "an alternate",
            Kind::Command => "a command",
            Kind::Event => "an event",
        }
    }
}

/// A registered name.
#[derive(Debug)]
struct Info {
    kind: Kind,
    /// Where it is defined (`None` for builtins and implicit types).
    pos: Option<Pos>,
    cond: Option<Cond>,
    /// Index into the definitions.
    def: Option<usize>,
}

/// A `QObject` type, to tell alternate branches apart by the JSON value they accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QObj {
    Null,
    Num,
    Str,
    Bool,
    Dict,
    List,
}

struct Compiler<'d> {
    defs: &'d [Def],
    names: HashMap<String, Info>,
    /// Values of every enum, implicit ones included.
    enums: HashMap<String, Vec<String>>,
    /// Flattened members of the structs computed so far.
    flat: HashMap<String, Vec<Member>>,
    /// Member copies made so far, against [`MAX_FLATTEN_WORK`].
    work: usize,
    schema: Schema,
}

impl<'d> Compiler<'d> {
    fn new(defs: &'d [Def]) -> Result<Self, QapiError> {
        let mut c = Compiler {
            defs,
            names: HashMap::new(),
            enums: HashMap::new(),
            flat: HashMap::new(),
            work: 0,
            schema: Schema::default(),
        };
        for &(name, json_type) in BUILTIN_TYPES {
            c.builtin(name, Kind::Builtin(json_type));
            c.schema
                .insert(entity(name, Meta::Builtin { json_type }, None));
        }
        c.builtin(QTYPE, Kind::Enum);
        let qtype_values: Vec<String> = QTYPE_VALUES.iter().map(|&v| v.to_owned()).collect();
        c.schema.insert(entity(
            QTYPE,
            Meta::Enum {
                members: qtype_values.iter().map(|v| enum_value(v, None)).collect(),
            },
            None,
        ));
        c.enums.insert(QTYPE.to_owned(), qtype_values);
        c.builtin(EMPTY, Kind::Struct);
        c.flat.insert(EMPTY.to_owned(), Vec::new());
        c.schema.insert(entity(EMPTY, object(Vec::new()), None));

        for (index, def) in defs.iter().enumerate() {
            let kind = match &def.body {
                Body::Enum(values) => {
                    c.enums.insert(
                        def.name.clone(),
                        values.iter().map(|v| v.name.clone()).collect(),
                    );
                    Kind::Enum
                }
                Body::Struct { .. } => Kind::Struct,
                Body::FlatUnion { .. } => Kind::Union,
                Body::SimpleUnion { branches } => {
                    // The implicit enum of the union's cases, `NameKind`.
                    let kind_name = format!("{}Kind", def.name);
                    c.register(&kind_name, Kind::Enum, &def.pos, def.cond.clone(), None)?;
                    c.enums
                        .insert(kind_name, branches.iter().map(|b| b.name.clone()).collect());
                    Kind::Union
                }
                Body::Alternate(_) => Kind::Alternate,
                Body::Command { .. } => Kind::Command,
                Body::Event { .. } => Kind::Event,
            };
            c.register(
                &def.name,
                kind,
                &def.name_pos,
                def.cond.clone(),
                Some(index),
            )?;
        }
        Ok(c)
    }

    fn builtin(&mut self, name: &str, kind: Kind) {
        self.names.insert(
            name.to_owned(),
            Info {
                kind,
                pos: None,
                cond: None,
                def: None,
            },
        );
    }

    fn register(
        &mut self,
        name: &str,
        kind: Kind,
        pos: &Pos,
        cond: Option<Cond>,
        def: Option<usize>,
    ) -> Result<(), QapiError> {
        if let Some(old) = self.names.get(name) {
            return match &old.pos {
                Some(at) => err(pos, format!("'{name}' is already defined at {at}")),
                None => err(pos, format!("'{name}' is a built-in type")),
            };
        }
        self.names.insert(
            name.to_owned(),
            Info {
                kind,
                pos: Some(pos.clone()),
                cond,
                def,
            },
        );
        Ok(())
    }

    /// Accounts for `n` member copies made for the definition at `pos`.
    fn charge(&mut self, n: usize, pos: &Pos) -> Result<(), QapiError> {
        self.work = self.work.saturating_add(n);
        if self.work > MAX_FLATTEN_WORK {
            return err(
                pos,
                format!(
                    "schema too large: flattening needs more than {MAX_FLATTEN_WORK} member copies"
                ),
            );
        }
        Ok(())
    }

    fn run(mut self) -> Result<Schema, QapiError> {
        for def in self.defs {
            let meta = self.build(def)?;
            self.schema.insert(Entity {
                name: def.name.clone(),
                meta,
                features: def.features.clone(),
                cond: def.cond.clone(),
            });
        }
        Ok(self.schema)
    }

    fn build(&mut self, def: &Def) -> Result<Meta, QapiError> {
        Ok(match &def.body {
            Body::Enum(values) => Meta::Enum {
                members: values.clone(),
            },
            Body::Struct { .. } => object(self.struct_members(&def.name, &def.pos)?),
            Body::FlatUnion {
                base,
                discriminator,
                discriminator_pos,
                branches,
            } => {
                let members = self.union_base(def, base)?;
                let tag = members
                    .iter()
                    .find(|m| &m.name == discriminator)
                    .ok_or_else(|| QapiError::Schema {
                        pos: discriminator_pos.clone(),
                        message: format!(
                            "discriminator '{discriminator}' is not a member of the base of '{}'",
                            def.name
                        ),
                    })?;
                if tag.optional {
                    return err(
                        discriminator_pos,
                        format!("discriminator member '{discriminator}' must not be optional"),
                    );
                }
                if tag.cond.is_some() {
                    return err(
                        discriminator_pos,
                        format!("discriminator member '{discriminator}' must not be conditional"),
                    );
                }
                let tag_type = tag.ty.clone();
                let Some(values) = self
                    .enums
                    .get(&tag_type)
                    .map(|v| v.iter().cloned().collect::<HashSet<String>>())
                else {
                    return err(
                        discriminator_pos,
                        format!(
                            "discriminator member '{discriminator}' must be of enum type, not '{tag_type}'"
                        ),
                    );
                };
                self.charge(members.len(), &def.pos)?;
                let base_names: HashSet<String> = members.iter().map(|m| m.name.clone()).collect();
                let mut variants = Vec::new();
                for branch in branches {
                    if !values.contains(&branch.name) {
                        return err(
                            &branch.pos,
                            format!(
                                "branch '{}' is not a value of '{tag_type}', the discriminator's type",
                                branch.name
                            ),
                        );
                    }
                    let ty = self.branch_object(branch, &base_names)?;
                    variants.push(Variant {
                        case: branch.name.clone(),
                        ty,
                        cond: branch.cond.clone(),
                    });
                }
                Meta::Object {
                    members,
                    tag: Some(discriminator.clone()),
                    variants,
                }
            }
            Body::SimpleUnion { branches } => self.simple_union(def, branches)?,
            Body::Alternate(branches) => Meta::Alternate {
                members: self.alternate(branches)?,
            },
            Body::Command {
                data,
                returns,
                allow_oob,
            } => {
                let arg_type = self.args(def, data)?;
                let ret_type = match returns {
                    Some(r) => self.resolve(r, "'returns'")?,
                    None => EMPTY.to_owned(),
                };
                Meta::Command {
                    arg_type,
                    ret_type,
                    allow_oob: *allow_oob,
                }
            }
            Body::Event { data } => Meta::Event {
                arg_type: self.args(def, data)?,
            },
        })
    }

    /// Resolves a type reference to its model name (`T` or `[T]`, adding the array entity).
    fn resolve(&mut self, r: &TypeRef, what: &str) -> Result<String, QapiError> {
        let Some(info) = self.names.get(&r.name) else {
            return err(&r.pos, format!("{what} uses undefined type '{}'", r.name));
        };
        if matches!(info.kind, Kind::Command | Kind::Event) {
            return err(
                &r.pos,
                format!(
                    "{what} uses {} '{}' as a type",
                    info.kind.describe(),
                    r.name
                ),
            );
        }
        if !r.array {
            return Ok(r.name.clone());
        }
        let name = format!("[{}]", r.name);
        if !self.schema.entities.contains_key(&name) {
            // As in QEMU, an array exists wherever its element type does.
            let cond = info.cond.clone();
            self.schema.insert(entity(
                &name,
                Meta::Array {
                    element_type: r.name.clone(),
                },
                cond,
            ));
        }
        Ok(name)
    }

    /// Resolves a reference that must name an object type (struct, or union if allowed).
    fn resolve_object(
        &mut self,
        r: &TypeRef,
        what: &str,
        allow_union: bool,
    ) -> Result<(String, Kind), QapiError> {
        let name = self.resolve(r, what)?;
        let kind = self.names.get(&r.name).map(|i| i.kind);
        match kind {
            Some(k @ Kind::Struct) if !r.array => Ok((name, k)),
            Some(k @ Kind::Union) if !r.array && allow_union => Ok((name, k)),
            Some(k) => {
                let found = if r.array { "an array" } else { k.describe() };
                let wanted = if allow_union {
                    "a struct or union"
                } else {
                    "a struct"
                };
                err(
                    &r.pos,
                    format!("{what} must be {wanted}, but '{}' is {found}", r.name),
                )
            }
            None => err(&r.pos, format!("{what} uses undefined type '{}'", r.name)),
        }
    }

    fn member(&mut self, m: &MemberDef) -> Result<Member, QapiError> {
        Ok(Member {
            name: m.name.clone(),
            ty: self.resolve(&m.ty, &format!("member '{}'", m.name))?,
            optional: m.optional,
            features: m.features.clone(),
            cond: m.cond.clone(),
        })
    }

    fn own_members(&mut self, defs: &[MemberDef]) -> Result<Vec<Member>, QapiError> {
        defs.iter().map(|m| self.member(m)).collect()
    }

    /// Flattened members of struct `name`: its bases' (outermost first), then its own. Walks
    /// the base chain iteratively so a long chain cannot exhaust the stack.
    fn struct_members(&mut self, name: &str, pos: &Pos) -> Result<Vec<Member>, QapiError> {
        // The chain from `name` down to the first struct already flattened (or without base).
        let mut chain: Vec<&'d Def> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut current = name.to_owned();
        let mut inherited = loop {
            if let Some(done) = self.flat.get(&current) {
                break done.clone();
            }
            let Some(def) = self
                .names
                .get(&current)
                .and_then(|i| i.def)
                .and_then(|i| self.defs.get(i))
            else {
                return err(pos, format!("'{current}' is not a struct"));
            };
            if !seen.insert(def.name.as_str()) {
                return err(&def.pos, format!("struct '{}' is its own base", def.name));
            }
            chain.push(def);
            let Body::Struct { base, .. } = &def.body else {
                return err(&def.pos, format!("'{}' is not a struct", def.name));
            };
            match base {
                None => break Vec::new(),
                Some(b) => {
                    self.resolve_object(b, "'base'", false)?;
                    current.clone_from(&b.name);
                }
            }
        };
        // Now build from the innermost base outwards.
        while let Some(def) = chain.pop() {
            if let Body::Struct { members, .. } = &def.body {
                let own = self.own_members(members)?;
                check_clash(&inherited, members, &def.name, "base")?;
                inherited.extend(own);
            }
            self.charge(inherited.len(), &def.pos)?;
            self.flat.insert(def.name.clone(), inherited.clone());
        }
        Ok(inherited)
    }

    /// Members of a flat union's base (creating `q_obj_<Union>-base` for an inline base).
    fn union_base(&mut self, def: &Def, base: &UnionBase) -> Result<Vec<Member>, QapiError> {
        match base {
            UnionBase::Named(r) => {
                self.resolve_object(r, "'base'", false)?;
                self.struct_members(&r.name, &r.pos)
            }
            UnionBase::Members(defs) => {
                let members = self.own_members(defs)?;
                self.schema.insert(entity(
                    &format!("q_obj_{}-base", def.name),
                    object(members.clone()),
                    def.cond.clone(),
                ));
                Ok(members)
            }
        }
    }

    /// Members a union's branch type contributes at its level: a struct's flattened members,
    /// a union's base members. (A union branch's own variants are selected by its own tag.)
    fn object_members(&mut self, name: &str, pos: &Pos) -> Result<Vec<Member>, QapiError> {
        let def = self
            .names
            .get(name)
            .and_then(|i| i.def)
            .and_then(|i| self.defs.get(i));
        match def.map(|d| (d, &d.body)) {
            Some((_, Body::FlatUnion { base, .. })) => match base {
                UnionBase::Named(r) => self.struct_members(&r.name, &r.pos),
                UnionBase::Members(defs) => self.own_members(defs),
            },
            Some((d, Body::SimpleUnion { .. })) => Ok(vec![Member {
                name: "type".to_owned(),
                ty: format!("{}Kind", d.name),
                optional: false,
                features: Vec::new(),
                cond: None,
            }]),
            _ => self.struct_members(name, pos),
        }
    }

    /// Checks a flat union branch: an object type whose members do not clash with the base's.
    fn branch_object(
        &mut self,
        branch: &Branch,
        base: &HashSet<String>,
    ) -> Result<String, QapiError> {
        let what = format!("branch '{}'", branch.name);
        let (name, _) = self.resolve_object(&branch.ty, &what, true)?;
        let members = self.object_members(&branch.ty.name, &branch.ty.pos)?;
        self.charge(members.len(), &branch.pos)?;
        if let Some(m) = members.iter().find(|m| base.contains(&m.name)) {
            return err(
                &branch.pos,
                format!(
                    "member '{}' of branch '{}' ('{name}') clashes with a base member",
                    m.name, branch.name
                ),
            );
        }
        Ok(name)
    }

    /// A pre-6.2 simple union: tag `type` of the implicit enum `NameKind`, each branch wrapped
    /// as `{'data': VALUE}` in `q_obj_T-wrapper`.
    fn simple_union(&mut self, def: &Def, branches: &[Branch]) -> Result<Meta, QapiError> {
        let kind_name = format!("{}Kind", def.name);
        let mut values = Vec::new();
        let mut variants = Vec::new();
        for branch in branches {
            let ty = self.resolve(&branch.ty, &format!("branch '{}'", branch.name))?;
            // QEMU names the wrapper after the C name of the type: arrays are `TList`.
            let c_name = if branch.ty.array {
                format!("{}List", branch.ty.name)
            } else {
                branch.ty.name.clone()
            };
            let wrapper = format!("q_obj_{c_name}-wrapper");
            if !self.schema.entities.contains_key(&wrapper) {
                let data = Member {
                    name: "data".to_owned(),
                    ty,
                    optional: false,
                    features: Vec::new(),
                    cond: None,
                };
                self.schema
                    .insert(entity(&wrapper, object(vec![data]), None));
            }
            values.push(enum_value(&branch.name, branch.cond.clone()));
            variants.push(Variant {
                case: branch.name.clone(),
                ty: wrapper,
                cond: branch.cond.clone(),
            });
        }
        self.schema.insert(entity(
            &kind_name,
            Meta::Enum { members: values },
            def.cond.clone(),
        ));
        Ok(Meta::Object {
            members: vec![Member {
                name: "type".to_owned(),
                ty: kind_name,
                optional: false,
                features: Vec::new(),
                cond: None,
            }],
            tag: Some("type".to_owned()),
            variants,
        })
    }

    /// An alternate's branch types, checked to be distinguishable by JSON value.
    fn alternate(&mut self, branches: &[Branch]) -> Result<Vec<String>, QapiError> {
        let mut seen: Vec<(QObj, &str)> = Vec::new();
        let mut out = Vec::new();
        for branch in branches {
            let what = format!("branch '{}'", branch.name);
            let ty = self.resolve(&branch.ty, &what)?;
            let kind = self.names.get(&branch.ty.name).map(|i| i.kind);
            let qobj = match kind {
                _ if branch.ty.array => QObj::List,
                Some(Kind::Builtin(JsonType::String) | Kind::Enum) => QObj::Str,
                Some(Kind::Builtin(JsonType::Number | JsonType::Int)) => QObj::Num,
                Some(Kind::Builtin(JsonType::Boolean)) => QObj::Bool,
                Some(Kind::Builtin(JsonType::Null)) => QObj::Null,
                Some(Kind::Struct | Kind::Union) => QObj::Dict,
                Some(k) => {
                    return err(
                        &branch.ty.pos,
                        format!(
                            "alternate {what} cannot be {} '{}'",
                            k.describe(),
                            branch.ty.name
                        ),
                    );
                }
                None => {
                    return err(
                        &branch.ty.pos,
                        format!("{what} uses undefined type '{}'", branch.ty.name),
                    );
                }
            };
            // A string branch also takes keyval input that looks like numbers and booleans, so
            // it clashes with those; an enum only if some value looks like one.
            let mut conflicts = vec![qobj];
            if qobj == QObj::Str && !branch.ty.array {
                match self.enums.get(&branch.ty.name) {
                    Some(values) => {
                        if values.iter().any(|v| v == "on" || v == "off") {
                            conflicts.push(QObj::Bool);
                        }
                        if values.iter().any(|v| {
                            v.starts_with(|c: char| c.is_ascii_digit() || "-+.".contains(c))
                        }) {
                            conflicts.push(QObj::Num);
                        }
                    }
                    None => conflicts.extend([QObj::Num, QObj::Bool]),
                }
            }
            for q in conflicts {
                if let Some((_, other)) = seen.iter().find(|(s, _)| *s == q) {
                    return err(
                        &branch.pos,
                        format!(
                            "alternate branch '{}' can't be distinguished from '{other}'",
                            branch.name
                        ),
                    );
                }
                seen.push((q, &branch.name));
            }
            out.push(ty);
        }
        Ok(out)
    }

    /// A command's or event's argument type: `q_empty`, the named type, or `q_obj_NAME-arg`.
    fn args(&mut self, def: &Def, data: &Data) -> Result<String, QapiError> {
        match data {
            Data::Absent => Ok(EMPTY.to_owned()),
            // QEMU makes no implicit type for empty members.
            Data::Members(m) if m.is_empty() => Ok(EMPTY.to_owned()),
            Data::Members(defs) => {
                let members = self.own_members(defs)?;
                let name = format!("q_obj_{}-arg", def.name);
                self.schema
                    .insert(entity(&name, object(members), def.cond.clone()));
                Ok(name)
            }
            Data::Named(r) => {
                let (name, kind) = self.resolve_object(r, "'data'", true)?;
                if kind == Kind::Union && !def.boxed {
                    return err(
                        &r.pos,
                        format!("'data' may name union '{}' only with 'boxed': true", r.name),
                    );
                }
                Ok(name)
            }
        }
    }
}

/// Checks that `own` members do not reuse the name of an `inherited` one.
fn check_clash(
    inherited: &[Member],
    own: &[MemberDef],
    owner: &str,
    from: &str,
) -> Result<(), QapiError> {
    if inherited.is_empty() {
        return Ok(());
    }
    let inherited: HashSet<&str> = inherited.iter().map(|m| m.name.as_str()).collect();
    for m in own {
        if inherited.contains(m.name.as_str()) {
            return err(
                &m.pos,
                format!(
                    "member '{}' of '{owner}' clashes with a member of its {from}",
                    m.name
                ),
            );
        }
    }
    Ok(())
}

fn entity(name: &str, meta: Meta, cond: Option<Cond>) -> Entity {
    Entity {
        name: name.to_owned(),
        meta,
        features: Vec::new(),
        cond,
    }
}

fn object(members: Vec<Member>) -> Meta {
    Meta::Object {
        members,
        tag: None,
        variants: Vec::new(),
    }
}

fn enum_value(name: &str, cond: Option<Cond>) -> EnumValue {
    EnumValue {
        name: name.to_owned(),
        features: Vec::new(),
        cond,
    }
}
