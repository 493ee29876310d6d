//! A data-only reader for the pickles inside PyTorch checkpoints.
//!
//! Nothing is ever executed: globals resolve against a short allowlist (the torch tensor
//! rebuild functions, typed storages and `collections.OrderedDict`); any other global is an
//! error. Memo size, stack depth and string lengths are capped, and every length is checked
//! against the bytes that remain before anything is allocated.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::DType;

/// Limits that bound the work and memory of one unpickling.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_memo: usize,
    pub max_stack: usize,
    pub max_marks: usize,
    pub max_ops: usize,
    pub max_str: usize,
    /// Node visits allowed when walking the result (defends against shared-reference bombs).
    pub max_nodes: usize,
    /// Estimated bytes of the object graph (containers, strings, memo entries).
    pub max_bytes: usize,
    /// Bytes of tensor metadata (names, storage keys, shapes) collected from the graph.
    pub max_collect_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memo: 1 << 18,
            max_stack: 1 << 18,
            max_marks: 1_000,
            max_ops: 50_000_000,
            max_str: 1 << 26,
            max_nodes: 1_000_000,
            max_bytes: 24 << 20,
            max_collect_bytes: 64 << 20,
        }
    }
}

/// A reference to storage recorded by a persistent id.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: DType,
    pub numel: u64,
}

/// A tensor rebuilt (as metadata) by `torch._utils._rebuild_tensor_v2`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// The globals a checkpoint may name.
#[derive(Debug, Clone, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    Storage(DType),
}

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Items>),
    List(Rc<RefCell<Items>>),
    Dict(Rc<RefCell<Pairs>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// A persistent id that is not a torch storage: kept so the error can say so.
    OtherPid,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::OtherPid => "persistent id",
        }
    }
    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// What went wrong, with the byte offset of the opcode.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pickle byte {}: {}", self.offset, self.message)
    }
}

type R<T> = Result<T, PickleError>;

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", storage) => Global::Storage(match storage {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        }),
        _ => return None,
    })
}

/// Elements of a tuple or list. Dropping them never recurses: a hostile file can nest
/// containers hundreds of thousands deep, and a recursive drop would overflow the stack.
#[derive(Debug, Clone, Default)]
pub struct Items(pub Vec<Value>);

/// Entries of a dict; dropped without recursion like [`Items`].
#[derive(Debug, Clone, Default)]
pub struct Pairs(pub Vec<(Value, Value)>);

impl std::ops::Deref for Items {
    type Target = Vec<Value>;
    fn deref(&self) -> &Vec<Value> {
        &self.0
    }
}
impl std::ops::DerefMut for Items {
    fn deref_mut(&mut self) -> &mut Vec<Value> {
        &mut self.0
    }
}
impl std::ops::Deref for Pairs {
    type Target = Vec<(Value, Value)>;
    fn deref(&self) -> &Vec<(Value, Value)> {
        &self.0
    }
}
impl std::ops::DerefMut for Pairs {
    fn deref_mut(&mut self) -> &mut Vec<(Value, Value)> {
        &mut self.0
    }
}

impl Drop for Items {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            dispose(std::mem::take(&mut self.0));
        }
    }
}
impl Drop for Pairs {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            dispose(self.0.drain(..).flat_map(|(k, v)| [k, v]).collect());
        }
    }
}

/// Frees values with a work list: a container whose last owner we hold is emptied into the
/// list before it is freed, so each drop stays shallow.
fn dispose(mut work: Vec<Value>) {
    while let Some(v) = work.pop() {
        match v {
            Value::Tuple(rc) => {
                if let Ok(mut items) = Rc::try_unwrap(rc) {
                    work.append(&mut items.0)
                }
            }
            Value::List(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    work.append(&mut cell.into_inner().0)
                }
            }
            Value::Dict(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    for (k, v) in cell.into_inner().0.drain(..) {
                        work.push(k);
                        work.push(v);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Unpickles one pickle starting at `data[0]`. Returns the value and the bytes consumed.
pub fn load(data: &[u8], limits: &Limits) -> R<(Value, usize)> {
    Machine { data, pos: 0, limits, stack: vec![], marks: vec![], memo: HashMap::new(), ops: 0, bytes: 0 }.run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    limits: &'a Limits,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    ops: usize,
    bytes: usize,
}

impl<'a> Machine<'a> {
    fn err<T>(&self, at: usize, msg: impl Into<String>) -> R<T> {
        Err(PickleError { offset: at, message: msg.into() })
    }
    fn take(&mut self, n: usize, at: usize) -> R<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return self.err(at, format!("truncated: needs {n} bytes, {} remain", self.data.len() - self.pos));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, at: usize) -> R<u8> {
        Ok(self.take(1, at)?[0])
    }
    fn u16(&mut self, at: usize) -> R<u16> {
        Ok(u16::from_le_bytes(self.take(2, at)?.try_into().unwrap()))
    }
    fn u32(&mut self, at: usize) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4, at)?.try_into().unwrap()))
    }
    fn u64(&mut self, at: usize) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8, at)?.try_into().unwrap()))
    }
    fn line(&mut self, at: usize) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().take(self.limits.max_str.min(4096)).position(|&b| b == b'\n') else {
            return self.err(at, "unterminated text line");
        };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).or_else(|_| self.err(at, "text line is not UTF-8"))
    }
    fn sized(&mut self, n: u64, at: usize) -> R<&'a [u8]> {
        if n > self.limits.max_str as u64 {
            return self.err(at, format!("string of {n} bytes exceeds the cap of {}", self.limits.max_str));
        }
        self.take(n as usize, at)
    }
    fn text(&mut self, n: u64, at: usize) -> R<Value> {
        let b = self.sized(n, at)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::Str(s.into())),
            Err(_) => self.err(at, "string is not UTF-8"),
        }
    }
    /// Accounts for memory the object graph is about to hold; refuses past the cap.
    fn charge(&mut self, bytes: usize, at: usize) -> R<()> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limits.max_bytes {
            return self.err(at, format!("object graph exceeds the {} MiB cap (memory bomb?)", self.limits.max_bytes >> 20));
        }
        Ok(())
    }
    fn push(&mut self, v: Value, at: usize) -> R<()> {
        let cost = match &v {
            Value::Tuple(t) => 128 + 32 * t.len(),
            Value::List(l) => 128 + 32 * l.borrow().len(),
            Value::Dict(d) => 128 + 64 * d.borrow().len(),
            Value::Str(s) => 32 + s.len(),
            Value::Bytes(b) | Value::BigInt(b) => 32 + b.len(),
            Value::Storage(_) | Value::Tensor(_) => 128,
            _ => 0,
        };
        self.charge(cost, at)?;
        if self.stack.len() >= self.limits.max_stack {
            return self.err(at, "stack depth cap exceeded");
        }
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self, at: usize) -> R<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err(at, "pop from empty stack");
        }
        Ok(self.stack.pop().unwrap())
    }
    fn top(&mut self, at: usize) -> R<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err(at, "empty stack");
        }
        Ok(self.stack.last_mut().unwrap())
    }
    fn pop_mark(&mut self, at: usize) -> R<Vec<Value>> {
        let Some(m) = self.marks.pop() else { return self.err(at, "no mark on the stack") };
        Ok(self.stack.split_off(m))
    }
    fn memo_put(&mut self, idx: u32, at: usize) -> R<()> {
        let v = self.top(at)?.clone();
        self.charge(48, at)?;
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&idx) {
            return self.err(at, format!("memo cap of {} entries exceeded", self.limits.max_memo));
        }
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u32, at: usize) -> R<()> {
        match self.memo.get(&idx) {
            Some(v) => {
                let v = v.clone();
                self.push(v, at)
            }
            None => self.err(at, format!("memo key {idx} was never stored")),
        }
    }

    fn run(mut self) -> R<(Value, usize)> {
        loop {
            self.ops += 1;
            let at = self.pos;
            if self.ops > self.limits.max_ops {
                return self.err(at, "operation cap exceeded");
            }
            let op = self.u8(at)?;
            match op {
                0x80 => {
                    let p = self.u8(at)?;
                    if p > 5 {
                        return self.err(at, format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.u64(at)?; // FRAME: length only
                }
                b'.' => {
                    let v = self.pop(at)?;
                    return Ok((v, self.pos));
                }
                b'(' => {
                    if self.marks.len() >= self.limits.max_marks {
                        return self.err(at, format!("nesting deeper than {} marks", self.limits.max_marks));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop(at)?;
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let v = self.top(at)?.clone();
                    self.push(v, at)?;
                }
                b'N' => self.push(Value::None, at)?,
                0x88 => self.push(Value::Bool(true), at)?,
                0x89 => self.push(Value::Bool(false), at)?,
                b'J' => {
                    let v = self.u32(at)? as i32 as i64;
                    self.push(Value::Int(v), at)?
                }
                b'K' => {
                    let v = self.u8(at)? as i64;
                    self.push(Value::Int(v), at)?
                }
                b'M' => {
                    let v = self.u16(at)? as i64;
                    self.push(Value::Int(v), at)?
                }
                b'I' | b'L' => {
                    let s = self.line(at)?.trim_end_matches('L');
                    let v = match s {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(s.parse().or_else(|_| self.err(at, format!("bad integer {s:?}")))?),
                    };
                    self.push(v, at)?
                }
                0x8a => {
                    let n = self.u8(at)? as usize;
                    let b = self.take(n, at)?;
                    if n > 8 {
                        self.push(Value::BigInt(b.into()), at)?;
                        continue;
                    }
                    let mut buf = [0u8; 8];
                    buf[..n].copy_from_slice(b);
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        buf[n..].fill(0xff);
                    }
                    self.push(Value::Int(i64::from_le_bytes(buf)), at)?
                }
                0x8b => return self.err(at, "LONG4 integers are not supported"),
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8, at)?.try_into().unwrap());
                    self.push(Value::Float(v), at)?
                }
                b'F' => {
                    let s = self.line(at)?;
                    let v = s.trim().parse().or_else(|_| self.err(at, format!("bad float {s:?}")))?;
                    self.push(Value::Float(v), at)?
                }
                b'X' => {
                    let n = self.u32(at)? as u64;
                    let v = self.text(n, at)?;
                    self.push(v, at)?
                }
                0x8c => {
                    let n = self.u8(at)? as u64;
                    let v = self.text(n, at)?;
                    self.push(v, at)?
                }
                0x8d => {
                    let n = self.u64(at)?;
                    let v = self.text(n, at)?;
                    self.push(v, at)?
                }
                b'V' => {
                    let s = self.line(at)?;
                    self.push(Value::Str(s.into()), at)?
                }
                b'T' | b'B' => {
                    let n = self.u32(at)? as u64;
                    let b = self.sized(n, at)?;
                    self.push(Value::Bytes(b.into()), at)?
                }
                b'U' | b'C' => {
                    let n = self.u8(at)? as u64;
                    let b = self.sized(n, at)?;
                    self.push(Value::Bytes(b.into()), at)?
                }
                0x8e => {
                    let n = self.u64(at)?;
                    let b = self.sized(n, at)?;
                    self.push(Value::Bytes(b.into()), at)?
                }
                b')' => self.push(Value::Tuple(Rc::new(Items::default())), at)?,
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push(Value::Tuple(Rc::new(Items(items))), at)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(Items(items))), at)?
                }
                b']' => self.push(Value::List(Rc::new(RefCell::new(Default::default()))), at)?,
                b'l' => {
                    let items = self.pop_mark(at)?;
                    self.push(Value::List(Rc::new(RefCell::new(Items(items)))), at)?
                }
                b'a' => {
                    self.charge(32, at)?;
                    let v = self.pop(at)?;
                    match self.top(at)? {
                        Value::List(l) => l.borrow_mut().push(v),
                        other => {
                            let k = other.kind();
                            return self.err(at, format!("APPEND to a {k}"));
                        }
                    }
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    self.charge(32 * items.len(), at)?;
                    match self.top(at)? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => {
                            let k = other.kind();
                            return self.err(at, format!("APPENDS to a {k}"));
                        }
                    }
                }
                b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Default::default()))), at)?,
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let pairs = pairs(items).or_else(|m| self.err(at, m))?;
                    self.push(Value::Dict(Rc::new(RefCell::new(Pairs(pairs)))), at)?
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    self.set_items(vec![(k, v)], at)?
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    let p = pairs(items).or_else(|m| self.err(at, m))?;
                    self.set_items(p, at)?
                }
                0x8f => self.push(Value::List(Rc::new(RefCell::new(Default::default()))), at)?, // EMPTY_SET
                0x90 => {
                    let items = self.pop_mark(at)?;
                    self.charge(32 * items.len(), at)?;
                    match self.top(at)? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        _ => return self.err(at, "ADDITEMS to a non-set"),
                    }
                }
                0x91 => {
                    let items = self.pop_mark(at)?;
                    self.push(Value::List(Rc::new(RefCell::new(Items(items)))), at)?
                }
                b'p' => {
                    let s = self.line(at)?;
                    let i = s.parse().or_else(|_| self.err(at, format!("bad memo key {s:?}")))?;
                    self.memo_put(i, at)?
                }
                b'q' => {
                    let i = self.u8(at)? as u32;
                    self.memo_put(i, at)?
                }
                b'r' => {
                    let i = self.u32(at)?;
                    self.memo_put(i, at)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i, at)?
                }
                b'g' => {
                    let s = self.line(at)?;
                    let i = s.parse().or_else(|_| self.err(at, format!("bad memo key {s:?}")))?;
                    self.memo_get(i, at)?
                }
                b'h' => {
                    let i = self.u8(at)? as u32;
                    self.memo_get(i, at)?
                }
                b'j' => {
                    let i = self.u32(at)?;
                    self.memo_get(i, at)?
                }
                b'c' => {
                    let module = self.line(at)?;
                    let name = self.line(at)?;
                    self.global(module, name, at)?
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => {
                            let (m, n) = (m.to_string(), n.to_string());
                            self.global(&m, &n, at)?
                        }
                        _ => return self.err(at, "STACK_GLOBAL needs two strings"),
                    }
                }
                b'Q' => {
                    let pid = self.pop(at)?;
                    let v = persistent(&pid).or_else(|m| self.err(at, m))?;
                    self.push(v, at)?
                }
                b'P' => return self.err(at, "text persistent ids are not supported"),
                b'R' => {
                    let args = self.pop(at)?;
                    let f = self.pop(at)?;
                    let v = self.reduce(f, args, at)?;
                    self.push(v, at)?
                }
                b'b' => {
                    // BUILD: state on an OrderedDict (its `_metadata`) is data we do not need.
                    let _state = self.pop(at)?;
                    match self.top(at)? {
                        Value::Dict(_) => {}
                        Value::Tensor(_) => {}
                        other => {
                            let k = other.kind();
                            return self.err(at, format!("BUILD on a {k} is not allowed"));
                        }
                    }
                }
                0x81 | 0x92 => return self.err(at, "NEWOBJ would construct an arbitrary object; refused"),
                b'i' | b'o' => return self.err(at, "INST/OBJ would construct an arbitrary object; refused"),
                0x82..=0x84 => return self.err(at, "extension registry opcodes are refused"),
                0x96..=0x98 => return self.err(at, "out-of-band buffers are not supported"),
                other => return self.err(at, format!("unknown opcode 0x{other:02x}")),
            }
        }
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>, at: usize) -> R<()> {
        self.charge(64 * items.len(), at)?;
        match self.top(at)? {
            Value::Dict(d) => {
                d.borrow_mut().extend(items);
                Ok(())
            }
            other => {
                let k = other.kind();
                self.err(at, format!("SETITEM on a {k}"))
            }
        }
    }

    fn global(&mut self, module: &str, name: &str, at: usize) -> R<()> {
        match resolve_global(module, name) {
            Some(g) => self.push(Value::Global(g), at),
            None => self.err(at, format!("global `{module}.{name}` is not allowed (only tensors, storages and dicts are read; code is never run)")),
        }
    }

    fn reduce(&mut self, f: Value, args: Value, at: usize) -> R<Value> {
        let Value::Tuple(args) = args else { return self.err(at, "REDUCE arguments are not a tuple") };
        let Value::Global(g) = f else { return self.err(at, format!("REDUCE on a {}", f.kind())) };
        match g {
            Global::OrderedDict => Ok(Value::Dict(Rc::new(RefCell::new(Default::default())))),
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                if args.len() < 4 {
                    return self.err(at, "_rebuild_tensor needs (storage, offset, size, stride)");
                }
                let Value::Storage(storage) = &args[0] else {
                    return self.err(at, format!("tensor storage is a {}", args[0].kind()));
                };
                let offset = args[1].as_int().filter(|&o| o >= 0);
                let shape = int_list(&args[2]);
                let stride = int_list(&args[3]);
                match (offset, shape, stride) {
                    (Some(offset), Some(shape), Some(stride)) if shape.len() == stride.len() => {
                        Ok(Value::Tensor(Rc::new(TensorRef { storage: (**storage).clone(), offset: offset as u64, shape, stride })))
                    }
                    _ => self.err(at, "tensor offset/size/stride are malformed"),
                }
            }
            Global::RebuildParameter => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => self.err(at, "_rebuild_parameter needs a tensor"),
            },
            Global::Storage(_) => self.err(at, "storage classes cannot be called"),
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of dict items".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn int_list(v: &Value) -> Option<Vec<u64>> {
    let Value::Tuple(t) = v else { return None };
    t.iter().map(|x| x.as_int().filter(|&i| i >= 0).map(|i| i as u64)).collect()
}

/// `('storage', torch.FloatStorage, key, location, numel)`; the legacy format appends a
/// view descriptor, which must be None (storage views are not supported).
fn persistent(pid: &Value) -> Result<Value, String> {
    let Value::Tuple(t) = pid else { return Ok(Value::OtherPid) };
    if !(t.len() == 5 || t.len() == 6) || t[0].as_str() != Some("storage") {
        return Ok(Value::OtherPid);
    }
    if t.len() == 6 && !matches!(t[5], Value::None) {
        return Err("storage views (legacy view metadata) are not supported".into());
    }
    let Value::Global(Global::Storage(dtype)) = t[1] else {
        return Err(format!("storage type is a {}", t[1].kind()));
    };
    let key = match &t[2] {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("storage key is a {}", other.kind())),
    };
    let numel = t[4].as_int().filter(|&n| n >= 0).ok_or("storage size is not a non-negative int")?;
    Ok(Value::Storage(Rc::new(StorageRef { key, dtype, numel: numel as u64 })))
}

/// Longest tensor name (dict keys joined with '.') accepted.
pub const MAX_NAME: usize = 4096;

/// Walks a loaded object and collects `name → tensor` pairs. Accepts a plain state dict, or a
/// checkpoint dict holding one under `state_dict` / `model` / `module`, and nested dicts (keys
/// joined with '.'). Visits, name lengths and the collected metadata's total size are capped so
/// shared-reference bombs stay cheap.
pub fn collect_tensors(root: &Value, limits: &Limits) -> Result<Vec<(String, TensorRef)>, String> {
    let Value::Dict(d) = root else {
        return Err(format!("top-level object is a {}, expected a state dict", root.kind()));
    };
    let wrapped = ["state_dict", "model_state_dict", "model", "module"]
        .iter()
        .find_map(|w| d.borrow().iter().find_map(|(k, v)| (k.as_str() == Some(w) && matches!(v, Value::Dict(_))).then(|| v.clone())));
    let mut walk = Walk { out: vec![], visits_left: limits.max_nodes, bytes_left: limits.max_collect_bytes, cap: limits.max_collect_bytes };
    walk.dict(wrapped.as_ref().unwrap_or(root), "", 0)?;
    Ok(walk.out)
}

struct Walk {
    out: Vec<(String, TensorRef)>,
    visits_left: usize,
    bytes_left: usize,
    cap: usize,
}

impl Walk {
    fn dict(&mut self, v: &Value, prefix: &str, depth: usize) -> Result<(), String> {
        if depth > 64 {
            return Err("state dict nests deeper than 64 levels".into());
        }
        let Value::Dict(d) = v else { return Ok(()) };
        for (k, v) in d.borrow().iter() {
            if self.visits_left == 0 {
                return Err("object graph is too large (possible reference bomb)".into());
            }
            self.visits_left -= 1;
            if !matches!(v, Value::Tensor(_) | Value::Dict(_)) {
                continue;
            }
            let key = match k {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                _ => continue,
            };
            if prefix.len() + 1 + key.len() > MAX_NAME {
                let joined = prefix.chars().chain(['.'].into_iter().filter(|_| !prefix.is_empty())).chain(key.chars());
                let start: String = joined.take(60).collect();
                return Err(format!("tensor name longer than {MAX_NAME} bytes (`{start}…`)"));
            }
            let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
            match v {
                Value::Tensor(t) => {
                    // What the copy below costs: a tensor shared by many keys is copied for each.
                    let cost = 64 + name.len() + t.storage.key.len() + 16 * t.shape.len();
                    self.bytes_left = self
                        .bytes_left
                        .checked_sub(cost)
                        .ok_or_else(|| format!("tensor names and metadata exceed the {} MiB cap (possible reference bomb)", self.cap >> 20))?;
                    self.out.push((name, (**t).clone()))
                }
                _ => self.dict(v, &name, depth + 1)?,
            }
        }
        Ok(())
    }
}
