//! Emits the protocol-2 pickle of an `OrderedDict` of tensors, opcode for opcode the
//! shape Python's pickler gives `torch.save(state_dict)`, restricted to what
//! `torch.load(weights_only=True)` accepts.

use super::op;
use crate::tensor::TensorRecord;

/// Python's pickler flushes SETITEMS every this many items.
const BATCH: usize = 1000;

/// Pickles `tensors` as an `OrderedDict` whose i-th tensor uses storage key `i`.
pub(crate) fn state_dict(tensors: &[TensorRecord]) -> Vec<u8> {
    let mut p = Pickler::default();
    p.out.extend_from_slice(&[op::PROTO, 2]);
    p.global("collections", "OrderedDict");
    p.out.extend_from_slice(&[op::EMPTY_TUPLE, op::REDUCE]);
    for (batch_no, batch) in tensors.chunks(BATCH).enumerate() {
        p.out.push(op::MARK);
        for (i, t) in batch.iter().enumerate() {
            p.tensor(t, &(batch_no * BATCH + i).to_string());
        }
        p.out.push(op::SETITEMS);
    }
    p.out.push(op::STOP);
    p.out
}

/// Contiguous (C order) strides as PyTorch computes them: a size-0 dimension counts as 1.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0usize; shape.len()];
    let mut s = 1usize;
    for (st, &d) in strides.iter_mut().zip(shape).rev() {
        *st = s;
        s = s.saturating_mul(d.max(1));
    }
    strides
}

#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    /// Memo slots of the globals written so far.
    globals: Vec<(String, u32)>,
}

impl Pickler {
    /// Writes `module.name`, once in full and memoized, afterwards by memo reference.
    fn global(&mut self, module: &str, name: &str) {
        let full = format!("{module}\n{name}\n");
        if let Some((_, slot)) = self.globals.iter().find(|(g, _)| *g == full) {
            let slot = *slot;
            self.get(slot);
            return;
        }
        self.out.push(op::GLOBAL);
        self.out.extend_from_slice(full.as_bytes());
        let slot = u32::try_from(self.globals.len()).unwrap_or(u32::MAX);
        self.put(slot);
        self.globals.push((full, slot));
    }

    fn put(&mut self, slot: u32) {
        match u8::try_from(slot) {
            Ok(s) => self.out.extend_from_slice(&[op::BINPUT, s]),
            Err(_) => {
                self.out.push(op::LONG_BINPUT);
                self.out.extend_from_slice(&slot.to_le_bytes());
            }
        }
    }

    fn get(&mut self, slot: u32) {
        match u8::try_from(slot) {
            Ok(s) => self.out.extend_from_slice(&[op::BINGET, s]),
            Err(_) => {
                self.out.push(op::LONG_BINGET);
                self.out.extend_from_slice(&slot.to_le_bytes());
            }
        }
    }

    fn str(&mut self, s: &str) {
        // every realistic string fits u32; longer ones cannot come from a state_dict key
        let n = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.out.push(op::BINUNICODE);
        self.out.extend_from_slice(&n.to_le_bytes());
        self.out.extend_from_slice(&s.as_bytes()[..n as usize]);
    }

    /// An int with the smallest opcode Python's pickler would choose.
    fn int(&mut self, v: u64) {
        if let Ok(b) = u8::try_from(v) {
            self.out.extend_from_slice(&[op::BININT1, b]);
        } else if let Ok(w) = u16::try_from(v) {
            self.out.push(op::BININT2);
            self.out.extend_from_slice(&w.to_le_bytes());
        } else if let Ok(i) = i32::try_from(v) {
            self.out.push(op::BININT);
            self.out.extend_from_slice(&i.to_le_bytes());
        } else {
            // LONG1: minimal little-endian two's complement
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] < 0x80 {
                bytes.pop();
            }
            if bytes.last().is_some_and(|&b| b >= 0x80) {
                bytes.push(0);
            }
            self.out.push(op::LONG1);
            self.out.push(bytes.len() as u8);
            self.out.extend_from_slice(&bytes);
        }
    }

    fn int_tuple(&mut self, items: &[usize]) {
        match items.len() {
            0 => self.out.push(op::EMPTY_TUPLE),
            n @ 1..=3 => {
                for &i in items {
                    self.int(i as u64);
                }
                self.out.push(op::TUPLE1 + (n as u8 - 1));
            }
            _ => {
                self.out.push(op::MARK);
                for &i in items {
                    self.int(i as u64);
                }
                self.out.push(op::TUPLE);
            }
        }
    }

    /// `name: _rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, t: &TensorRecord, key: &str) {
        self.str(&t.name);
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(op::MARK);
        // persistent id ('storage', torch.<Class>, key, 'cpu', numel)
        self.out.push(op::MARK);
        self.str("storage");
        self.global("torch", t.dtype.storage_class());
        self.str(key);
        self.str("cpu");
        self.int(t.numel().unwrap_or(0) as u64);
        self.out.extend_from_slice(&[op::TUPLE, op::BINPERSID]);
        self.int(0);
        self.int_tuple(&t.shape);
        self.int_tuple(&contiguous_strides(&t.shape));
        self.out.push(op::NEWFALSE);
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(&[op::EMPTY_TUPLE, op::REDUCE]);
        self.out.extend_from_slice(&[op::TUPLE, op::REDUCE]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_follow_pytorch() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
        assert_eq!(contiguous_strides(&[3, 0, 2]), vec![2, 2, 1]);
    }

    #[test]
    fn int_encoding_matches_python() {
        let enc = |v: u64| {
            let mut p = Pickler::default();
            p.int(v);
            p.out
        };
        assert_eq!(enc(5), vec![b'K', 5]);
        assert_eq!(enc(300), vec![b'M', 0x2c, 0x01]);
        assert_eq!(enc(70000), vec![b'J', 0x70, 0x11, 0x01, 0x00]);
        // pickle.dumps(2**31, 2) -> LONG1 5 bytes 00 00 00 80 00
        assert_eq!(enc(1 << 31), vec![0x8a, 5, 0, 0, 0, 0x80, 0]);
        assert_eq!(enc(1 << 40), vec![0x8a, 6, 0, 0, 0, 0, 0, 1]);
    }
}
