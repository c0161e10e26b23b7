//! The subset of Python's pickle format that `torch.save` state_dicts use.
//!
//! [`read`] is a small stack-machine interpreter that never executes anything: calls to
//! the few callables a state_dict needs (tensor rebuilds, `OrderedDict`) are interpreted,
//! every other call yields an opaque placeholder. [`write`] emits the protocol-2 stream
//! that Python's own pickler produces for an `OrderedDict` of tensors.
//!
//! Objects live in an arena and are referenced by index, so shared and even cyclic
//! references cost nothing to copy and need no recursion to traverse.

mod calls;
pub(crate) mod read;
pub(crate) mod write;

use std::collections::HashMap;

/// Index of an [`Object`] in the [`Unpickled`] arena.
pub(crate) type ObjId = usize;

/// A pickle value: scalars inline, everything else by reference into the arena.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(ObjId),
}

/// A heap object produced while unpickling.
#[derive(Debug)]
pub(crate) enum Object {
    Str(Box<str>),
    /// A `bytes`/`bytearray` (its content is not kept).
    Bytes,
    /// An integer that does not fit in `i64` (its value is not kept).
    BigInt,
    Tuple(Vec<Value>),
    /// A list, or a set / frozenset (order of insertion).
    List(Vec<Value>),
    /// A `dict` or `collections.OrderedDict`.
    Dict(Box<Dict>),
    /// A class or function reference, `module.name`.
    Global(Box<(String, String)>),
    /// A storage reference resolved from a persistent id.
    Storage(Box<StorageRef>),
    Tensor(Box<TensorMeta>),
    /// The result of calling or instantiating anything else; holds the callable's name.
    Opaque(Box<str>),
}

/// A hashable dict key (only the kinds that state_dicts and their wrappers use).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Str(Box<str>),
    Int(i64),
    None,
}

/// An insertion-ordered dict; assigning an existing key replaces the value in place.
#[derive(Debug, Default)]
pub(crate) struct Dict {
    pub(crate) entries: Vec<(Value, Value)>,
    index: HashMap<Key, usize>,
}

impl Dict {
    /// The hash key of a value, if it is of a hashable kind this reader tracks.
    pub(crate) fn key_of(objects: &[Object], v: Value) -> Option<Key> {
        match v {
            Value::None => Some(Key::None),
            Value::Bool(b) => Some(Key::Int(i64::from(b))),
            Value::Int(i) => Some(Key::Int(i)),
            Value::Obj(id) => match objects.get(id) {
                Some(Object::Str(s)) => Some(Key::Str(s.clone())),
                _ => None,
            },
            Value::Float(_) => None,
        }
    }

    /// Inserts `k: v` (with `key = key_of(k)`), replacing the value of an existing key
    /// in place as Python does. Returns whether a new entry was appended.
    pub(crate) fn insert(&mut self, key: Option<Key>, k: Value, v: Value) -> bool {
        if let Some(key) = key {
            if let Some(e) = self.index.get(&key).and_then(|&i| self.entries.get_mut(i)) {
                e.1 = v;
                return false;
            }
            self.index.insert(key, self.entries.len());
        }
        self.entries.push((k, v));
        true
    }
}

/// `('storage', torch.<Class>, key, location, numel)` after validation.
#[derive(Debug)]
pub(crate) struct StorageRef {
    /// Storage class name, e.g. `FloatStorage`.
    pub(crate) class: String,
    /// Record name under `data/`.
    pub(crate) key: String,
    /// Number of elements of the storage's dtype.
    pub(crate) numel: u64,
}

/// A strided view of a storage, from `_rebuild_tensor_v2`.
#[derive(Debug)]
pub(crate) struct TensorMeta {
    pub(crate) storage: ObjId,
    pub(crate) offset: u64,
    pub(crate) shape: Vec<u64>,
    pub(crate) stride: Vec<u64>,
}

/// The result of unpickling: the arena and the root value.
#[derive(Debug)]
pub(crate) struct Unpickled {
    pub(crate) objects: Vec<Object>,
    pub(crate) root: Value,
}

impl Unpickled {
    /// The object a value refers to, if it is a reference.
    pub(crate) fn obj(&self, v: Value) -> Option<&Object> {
        match v {
            Value::Obj(id) => self.objects.get(id),
            _ => None,
        }
    }

    /// The string a value refers to, if it is a `str`.
    pub(crate) fn as_str(&self, v: Value) -> Option<&str> {
        match self.obj(v) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The dict a value refers to, if it is a `dict`/`OrderedDict`.
    pub(crate) fn as_dict(&self, v: Value) -> Option<&Dict> {
        match self.obj(v) {
            Some(Object::Dict(d)) => Some(d),
            _ => None,
        }
    }

    /// Looks up a string key in a dict.
    pub(crate) fn dict_get(&self, d: &Dict, key: &str) -> Option<Value> {
        d.entries
            .iter()
            .rev()
            .find(|(k, _)| self.as_str(*k) == Some(key))
            .map(|(_, v)| *v)
    }

    /// A short Python-like description of a value's type, for error messages.
    pub(crate) fn type_name(&self, v: Value) -> String {
        type_name(&self.objects, v)
    }
}

/// A short Python-like description of a value's type, for error messages.
pub(crate) fn type_name(objects: &[Object], v: Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(_) => "bool".into(),
        Value::Int(_) => "int".into(),
        Value::Float(_) => "float".into(),
        Value::Obj(id) => match objects.get(id) {
            Some(Object::Str(_)) => "str".into(),
            Some(Object::Bytes) => "bytes".into(),
            Some(Object::BigInt) => "int".into(),
            Some(Object::Tuple(_)) => "tuple".into(),
            Some(Object::List(_)) => "list".into(),
            Some(Object::Dict(_)) => "dict".into(),
            Some(Object::Global(g)) => format!("{}.{}", g.0, g.1),
            Some(Object::Storage(_)) => "storage".into(),
            Some(Object::Tensor(_)) => "tensor".into(),
            Some(Object::Opaque(n)) => format!("{n} object"),
            None => "?".into(),
        },
    }
}

/// Opcode bytes (names as in Python's `pickletools`).
pub(crate) mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;

    /// The `pickletools` name of any opcode byte, for error messages.
    pub fn name(code: u8) -> &'static str {
        match code {
            b'(' => "MARK",
            b'.' => "STOP",
            b'0' => "POP",
            b'1' => "POP_MARK",
            b'2' => "DUP",
            b'F' => "FLOAT",
            b'I' => "INT",
            b'J' => "BININT",
            b'K' => "BININT1",
            b'L' => "LONG",
            b'M' => "BININT2",
            b'N' => "NONE",
            b'P' => "PERSID",
            b'Q' => "BINPERSID",
            b'R' => "REDUCE",
            b'S' => "STRING",
            b'T' => "BINSTRING",
            b'U' => "SHORT_BINSTRING",
            b'V' => "UNICODE",
            b'X' => "BINUNICODE",
            b'a' => "APPEND",
            b'b' => "BUILD",
            b'c' => "GLOBAL",
            b'd' => "DICT",
            b'}' => "EMPTY_DICT",
            b'e' => "APPENDS",
            b'g' => "GET",
            b'h' => "BINGET",
            b'i' => "INST",
            b'j' => "LONG_BINGET",
            b'l' => "LIST",
            b']' => "EMPTY_LIST",
            b'o' => "OBJ",
            b'p' => "PUT",
            b'q' => "BINPUT",
            b'r' => "LONG_BINPUT",
            b's' => "SETITEM",
            b't' => "TUPLE",
            b')' => "EMPTY_TUPLE",
            b'u' => "SETITEMS",
            b'G' => "BINFLOAT",
            b'B' => "BINBYTES",
            b'C' => "SHORT_BINBYTES",
            0x80 => "PROTO",
            0x81 => "NEWOBJ",
            0x82 => "EXT1",
            0x83 => "EXT2",
            0x84 => "EXT4",
            0x85 => "TUPLE1",
            0x86 => "TUPLE2",
            0x87 => "TUPLE3",
            0x88 => "NEWTRUE",
            0x89 => "NEWFALSE",
            0x8a => "LONG1",
            0x8b => "LONG4",
            0x8c => "SHORT_BINUNICODE",
            0x8d => "BINUNICODE8",
            0x8e => "BINBYTES8",
            0x8f => "EMPTY_SET",
            0x90 => "ADDITEMS",
            0x91 => "FROZENSET",
            0x92 => "NEWOBJ_EX",
            0x93 => "STACK_GLOBAL",
            0x94 => "MEMOIZE",
            0x95 => "FRAME",
            0x96 => "BYTEARRAY8",
            0x97 => "NEXT_BUFFER",
            0x98 => "READONLY_BUFFER",
            _ => "unknown",
        }
    }
}
