//! What REDUCE, NEWOBJ and BINPERSID mean: the callables of a state_dict pickle are
//! interpreted here (tensor rebuilds, parameters, `OrderedDict`); anything else becomes an
//! opaque placeholder, never an import.

use super::read::{Machine, MAX_CALL_DEPTH, VALUE_COST};
use super::{Object, StorageRef, TensorMeta, Value};
use crate::error::Result;

impl Machine<'_> {
    /// The elements of a tuple argument, copied (and charged).
    fn tuple_items(&mut self, v: Value, what: &str) -> Result<Vec<Value>> {
        let items = match self.obj(v) {
            Some(Object::Tuple(t)) => t.clone(),
            _ => {
                let desc = self.describe(v);
                return Err(self.err(format!("{what} must be a tuple, found {desc}")));
            }
        };
        self.charge(items.len().saturating_mul(VALUE_COST))?;
        Ok(items)
    }

    /// Interprets `func(*args)` for the callables state_dicts use.
    pub(super) fn call(&mut self, func: Value, args: Value, depth: usize) -> Result<Value> {
        let (module, name) = match self.obj(func) {
            Some(Object::Global(g)) => (g.0.clone(), g.1.clone()),
            Some(Object::Opaque(_)) => return self.alloc(Object::Opaque("call".into()), 4),
            _ => {
                let desc = self.describe(func);
                return Err(self.err(format!("REDUCE: {desc} is not callable")));
            }
        };
        let args = self.tuple_items(args, "REDUCE arguments")?;
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") => self.make_dict(&args),
            ("torch._utils", "_rebuild_tensor_v2") => {
                if !(6..=7).contains(&args.len()) {
                    return Err(self.err(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    )));
                }
                self.rebuild_tensor(&args)
            }
            ("torch._utils", "_rebuild_tensor") => {
                if args.len() != 4 {
                    return Err(self.err("_rebuild_tensor takes 4 arguments"));
                }
                self.rebuild_tensor(&args)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                match args.first() {
                    Some(&t @ Value::Obj(id))
                        if matches!(self.objects.get(id), Some(Object::Tensor(_))) =>
                    {
                        Ok(t)
                    }
                    _ => Err(self.err(format!("{name}: first argument is not a tensor"))),
                }
            }
            ("torch._tensor", "_rebuild_from_type_v2") => {
                if args.len() != 4 {
                    return Err(self.err("_rebuild_from_type_v2 takes 4 arguments"));
                }
                if depth >= MAX_CALL_DEPTH {
                    return Err(self.err("_rebuild_from_type_v2 nested too deeply"));
                }
                self.call(args[0], args[2], depth + 1)
            }
            _ => {
                let label = format!("{module}.{name}");
                let cost = label.len();
                self.alloc(Object::Opaque(label.into()), cost)
            }
        }
    }

    /// `cls.__new__(cls, *args)` (NEWOBJ): dicts become dicts, the rest is opaque.
    pub(super) fn instantiate(&mut self, cls: Value, args: Value) -> Result<Value> {
        let label = match self.obj(cls) {
            Some(Object::Global(g)) => match (g.0.as_str(), g.1.as_str()) {
                ("collections", "OrderedDict") | ("builtins", "dict") => return self.new_dict(),
                _ => format!("{}.{}", g.0, g.1),
            },
            Some(Object::Opaque(n)) => n.to_string(),
            _ => {
                let desc = self.describe(cls);
                return Err(self.err(format!("NEWOBJ: {desc} is not a class")));
            }
        };
        self.tuple_items(args, "NEWOBJ arguments")?;
        let cost = label.len();
        self.alloc(Object::Opaque(label.into()), cost)
    }

    /// `OrderedDict()` or `OrderedDict([(k, v), ...])`.
    fn make_dict(&mut self, args: &[Value]) -> Result<Value> {
        let d = self.new_dict()?;
        let Value::Obj(id) = d else {
            return Err(self.err("internal: dict allocation"));
        };
        match args {
            [] => {}
            [items] => {
                let items = match self.obj(*items) {
                    Some(Object::List(l) | Object::Tuple(l)) => l.clone(),
                    _ => return Err(self.err("OrderedDict argument must be a list of pairs")),
                };
                self.charge(items.len().saturating_mul(VALUE_COST))?;
                for item in items {
                    match self.obj(item) {
                        Some(Object::Tuple(p)) if p.len() == 2 => {
                            let (k, v) = (p[0], p[1]);
                            self.insert_into(id, k, v)?;
                        }
                        _ => return Err(self.err("OrderedDict item is not a pair")),
                    }
                }
            }
            _ => return Err(self.err("OrderedDict takes at most one argument")),
        }
        Ok(d)
    }

    fn non_negative(&self, v: Value, what: &str) -> Result<u64> {
        match v {
            Value::Int(i) => u64::try_from(i).map_err(|_| self.err(format!("negative {what}"))),
            Value::Bool(b) => Ok(u64::from(b)),
            _ => Err(self.err(format!("{what} must be an integer"))),
        }
    }

    fn int_tuple(&mut self, v: Value, what: &str) -> Result<Vec<u64>> {
        let items = self.tuple_items(v, what)?;
        items.iter().map(|&x| self.non_negative(x, what)).collect()
    }

    /// `_rebuild_tensor[_v2](storage, storage_offset, size, stride, ...)`.
    fn rebuild_tensor(&mut self, args: &[Value]) -> Result<Value> {
        let storage = match args[0] {
            Value::Obj(id) if matches!(self.objects.get(id), Some(Object::Storage(_))) => id,
            v => {
                let desc = self.describe(v);
                return Err(self.err(format!("tensor storage is a {desc}, not a storage")));
            }
        };
        let offset = self.non_negative(args[1], "storage offset")?;
        let shape = self.int_tuple(args[2], "tensor size")?;
        let stride = self.int_tuple(args[3], "tensor stride")?;
        if shape.len() != stride.len() {
            return Err(self.err(format!(
                "tensor size has {} dimensions but stride has {}",
                shape.len(),
                stride.len()
            )));
        }
        let cost = 16 * shape.len();
        let meta = TensorMeta {
            storage,
            offset,
            shape,
            stride,
        };
        self.alloc(Object::Tensor(Box::new(meta)), cost)
    }

    /// Resolves `('storage', torch.<Class>Storage, key, location, numel)`.
    pub(super) fn persistent_load(&mut self, pid: Value) -> Result<Value> {
        let items = self.tuple_items(pid, "persistent id")?;
        let bad = || "persistent id is not ('storage', class, key, location, numel)";
        if items.len() != 5 || self.str_of(items[0]) != Some("storage") {
            return Err(self.err(bad()));
        }
        let class = match self.obj(items[1]) {
            Some(Object::Global(g)) if g.0 == "torch" || g.0 == "torch.cuda" => g.1.clone(),
            _ => return Err(self.err(bad())),
        };
        let key = self
            .str_of(items[2])
            .ok_or_else(|| self.err(bad()))?
            .to_string();
        self.str_of(items[3]).ok_or_else(|| self.err(bad()))?;
        let numel = self.non_negative(items[4], "storage size")?;
        let cost = class.len() + key.len();
        let storage = StorageRef { class, key, numel };
        self.alloc(Object::Storage(Box::new(storage)), cost)
    }
}
