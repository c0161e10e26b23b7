//! A pickle interpreter for `torch.save` streams (protocols 2 to 5, no out-of-band data).
//!
//! Nothing is ever imported or executed. Memory is bounded: every allocation is charged
//! against a budget proportional to the stream length, so a crafted pickle cannot make
//! the reader allocate more than [`BUDGET_FACTOR`] bytes per input byte (plus a constant).

use super::{op, type_name, Dict, ObjId, Object, Unpickled, Value};
use crate::error::{CheckpointError, Result};
use std::collections::HashMap;

/// Allocation allowed per byte of pickle data.
pub(crate) const BUDGET_FACTOR: usize = 64;
/// Allocation allowed regardless of the stream length.
const BUDGET_SLACK: usize = 1 << 20;
/// Nesting limit for `_rebuild_from_type_v2` wrapping other rebuild calls.
pub(super) const MAX_CALL_DEPTH: usize = 8;
pub(super) const VALUE_COST: usize = std::mem::size_of::<Value>();
const OBJECT_COST: usize = std::mem::size_of::<Object>();
const MEMO_COST: usize = 32;
const KEY_COST: usize = 48;

/// Interprets a pickle stream and returns its object graph.
pub(crate) fn unpickle(data: &[u8]) -> Result<Unpickled> {
    let budget = data
        .len()
        .saturating_mul(BUDGET_FACTOR)
        .saturating_add(BUDGET_SLACK);
    let mut m = Machine {
        data,
        pos: 0,
        op_start: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
        budget,
    };
    m.run()
}

pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pub(super) objects: Vec<Object>,
    budget: usize,
}

impl<'a> Machine<'a> {
    pub(super) fn err(&self, msg: impl Into<String>) -> CheckpointError {
        CheckpointError::Pickle {
            offset: self.op_start,
            msg: msg.into(),
        }
    }

    pub(super) fn charge(&mut self, bytes: usize) -> Result<()> {
        match self.budget.checked_sub(bytes) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(CheckpointError::TooLarge(format!(
                "data.pkl needs more than {BUDGET_FACTOR} bytes of memory per byte \
                 (at byte {})",
                self.op_start
            ))),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let data: &'a [u8] = self.data;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| self.err("unexpected end of data"))?;
        let s = &data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn len_u32(&mut self) -> Result<usize> {
        usize::try_from(u32::from_le_bytes(self.array()?)).map_err(|_| self.err("length overflow"))
    }

    fn len_u64(&mut self) -> Result<usize> {
        usize::try_from(u64::from_le_bytes(self.array()?)).map_err(|_| self.err("length overflow"))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("unterminated GLOBAL line"))?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| self.err("GLOBAL name is not UTF-8"))?
            .to_string();
        self.pos += n + 1;
        Ok(s)
    }

    pub(super) fn alloc(&mut self, obj: Object, payload: usize) -> Result<Value> {
        self.charge(OBJECT_COST.saturating_add(payload))?;
        self.objects.push(obj);
        Ok(Value::Obj(self.objects.len() - 1))
    }

    fn push(&mut self, v: Value) -> Result<()> {
        self.charge(VALUE_COST)?;
        self.stack.push(v);
        Ok(())
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn peek(&self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.split_off(mark))
    }

    pub(super) fn obj(&self, v: Value) -> Option<&Object> {
        match v {
            Value::Obj(id) => self.objects.get(id),
            _ => None,
        }
    }

    pub(super) fn str_of(&self, v: Value) -> Option<&str> {
        match self.obj(v) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub(super) fn describe(&self, v: Value) -> String {
        type_name(&self.objects, v)
    }

    fn top_id(&self, what: &str) -> Result<ObjId> {
        match self.peek()? {
            Value::Obj(id) => Ok(id),
            v => Err(self.err(format!("{what} on {}", self.describe(v)))),
        }
    }

    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.err("string is not valid UTF-8"))?;
        self.alloc(Object::Str(s.into()), n)
    }

    fn bytes(&mut self, n: usize) -> Result<Value> {
        self.take(n)?;
        self.alloc(Object::Bytes, 0)
    }

    fn long(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        if n == 0 {
            return Ok(Value::Int(0));
        }
        let negative = b[n - 1] & 0x80 != 0;
        let fill = if negative { 0xff } else { 0 };
        if n > 8 {
            let high_ok = b[8..].iter().all(|&x| x == fill);
            let sign_ok = (b[7] & 0x80 != 0) == negative;
            if !(high_ok && sign_ok) {
                return self.alloc(Object::BigInt, 0);
            }
        }
        let mut a = [fill; 8];
        let k = n.min(8);
        a[..k].copy_from_slice(&b[..k]);
        Ok(Value::Int(i64::from_le_bytes(a)))
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.peek()?;
        self.charge(MEMO_COST)?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = *self
            .memo
            .get(&idx)
            .ok_or_else(|| self.err(format!("memo key {idx} not defined")))?;
        self.push(v)
    }

    fn extend_list(&mut self, items: Vec<Value>, what: &str) -> Result<()> {
        let id = self.top_id(what)?;
        self.charge(items.len().saturating_mul(VALUE_COST))?;
        let desc = self.describe(Value::Obj(id));
        match self.objects.get_mut(id) {
            Some(Object::List(l)) => {
                l.extend(items);
                Ok(())
            }
            Some(Object::Opaque(_)) => Ok(()),
            _ => Err(self.err(format!("{what} on {desc}"))),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if items.len() & 1 == 1 {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let id = self.top_id("SETITEM")?;
        match self.objects.get(id) {
            Some(Object::Dict(_)) => {}
            Some(Object::Opaque(_)) => return Ok(()),
            _ => {
                let desc = self.describe(Value::Obj(id));
                return Err(self.err(format!("SETITEM on {desc}")));
            }
        }
        for pair in items.chunks_exact(2) {
            self.insert_into(id, pair[0], pair[1])?;
        }
        Ok(())
    }

    pub(super) fn insert_into(&mut self, dict: ObjId, k: Value, v: Value) -> Result<()> {
        let key = Dict::key_of(&self.objects, k);
        let key_cost = match self.str_of(k) {
            Some(s) => s.len(),
            None => 0,
        };
        self.charge(2 * VALUE_COST + KEY_COST + key_cost)?;
        if let Some(Object::Dict(d)) = self.objects.get_mut(dict) {
            d.insert(key, k, v);
        }
        Ok(())
    }

    pub(super) fn new_dict(&mut self) -> Result<Value> {
        self.alloc(Object::Dict(Box::default()), std::mem::size_of::<Dict>())
    }

    fn run(&mut self) -> Result<Unpickled> {
        loop {
            self.op_start = self.pos;
            let code = self.u8()?;
            match code {
                op::PROTO => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {v}")));
                    }
                }
                op::FRAME => {
                    // frames only group opcodes for buffered I/O; the whole stream is in memory
                    self.take(8)?;
                }
                op::STOP => {
                    let root = self.pop()?;
                    return Ok(Unpickled {
                        objects: std::mem::take(&mut self.objects),
                        root,
                    });
                }
                op::MARK => {
                    self.charge(std::mem::size_of::<usize>())?;
                    self.marks.push(self.stack.len());
                }
                op::POP => {
                    if self.stack.len() > self.floor() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let v = self.peek()?;
                    self.push(v)?;
                }
                op::NONE => self.push(Value::None)?,
                op::NEWTRUE => self.push(Value::Bool(true))?,
                op::NEWFALSE => self.push(Value::Bool(false))?,
                op::BININT => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT1 => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::LONG1 => {
                    let n = usize::from(self.u8()?);
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                op::LONG4 => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = usize::try_from(n).map_err(|_| self.err("negative LONG4 length"))?;
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?;
                }
                op::BINUNICODE => {
                    let n = self.len_u32()?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                op::SHORT_BINUNICODE => {
                    let n = usize::from(self.u8()?);
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                op::BINUNICODE8 => {
                    let n = self.len_u64()?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                op::BINBYTES => {
                    let n = self.len_u32()?;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                op::SHORT_BINBYTES => {
                    let n = usize::from(self.u8()?);
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                op::BINBYTES8 | op::BYTEARRAY8 => {
                    let n = self.len_u64()?;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                op::EMPTY_TUPLE => {
                    let v = self.alloc(Object::Tuple(Vec::new()), 0)?;
                    self.push(v)?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1) + 1;
                    let mut items = vec![Value::None; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop()?;
                    }
                    let v = self.alloc(Object::Tuple(items), n * VALUE_COST)?;
                    self.push(v)?;
                }
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    let cost = items.len() * VALUE_COST;
                    let v = self.alloc(Object::Tuple(items), cost)?;
                    self.push(v)?;
                }
                op::EMPTY_LIST | op::EMPTY_SET => {
                    let v = self.alloc(Object::List(Vec::new()), 0)?;
                    self.push(v)?;
                }
                op::LIST | op::FROZENSET => {
                    let items = self.pop_mark()?;
                    let cost = items.len() * VALUE_COST;
                    let v = self.alloc(Object::List(items), cost)?;
                    self.push(v)?;
                }
                op::APPEND => {
                    let v = self.pop()?;
                    self.extend_list(vec![v], "APPEND")?;
                }
                op::APPENDS | op::ADDITEMS => {
                    let items = self.pop_mark()?;
                    self.extend_list(items, op::name(code))?;
                }
                op::EMPTY_DICT => {
                    let v = self.new_dict()?;
                    self.push(v)?;
                }
                op::DICT => {
                    let items = self.pop_mark()?;
                    let v = self.new_dict()?;
                    self.push(v)?;
                    self.set_items(items)?;
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let cost = module.len() + name.len();
                    let v = self.alloc(Object::Global(Box::new((module, name))), cost)?;
                    self.push(v)?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.str_of(module), self.str_of(name))
                    else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let (module, name) = (module.to_string(), name.to_string());
                    let cost = module.len() + name.len();
                    let v = self.alloc(Object::Global(Box::new((module, name))), cost)?;
                    self.push(v)?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args, 0)?;
                    self.push(v)?;
                }
                op::NEWOBJ => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.instantiate(cls, args)?;
                    self.push(v)?;
                }
                op::NEWOBJ_EX => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.instantiate(cls, args)?;
                    self.push(v)?;
                }
                op::BUILD => {
                    // `__setstate__`: the state of dicts (`_metadata`), parameters and opaque
                    // objects is irrelevant to the tensors, so it is dropped
                    self.pop()?;
                    self.peek()?;
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                op::BINPUT => {
                    let i = self.u8()?;
                    self.memo_put(u32::from(i))?;
                }
                op::LONG_BINPUT => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_put(i)?;
                }
                op::MEMOIZE => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo full"))?;
                    self.memo_put(i)?;
                }
                op::BINGET => {
                    let i = self.u8()?;
                    self.memo_get(u32::from(i))?;
                }
                op::LONG_BINGET => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_get(i)?;
                }
                other => {
                    return Err(CheckpointError::UnsupportedOpcode {
                        opcode: other,
                        name: op::name(other),
                        offset: self.op_start,
                    })
                }
            }
        }
    }
}
