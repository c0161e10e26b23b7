//! Unit tests over hand-built pickles and archives (no Python needed).

mod malformed;

use crate::pickle::op;
use crate::{read_state_dict_bytes, write_state_dict_bytes, DType, TensorRecord};
use std::io::{Cursor, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// A tiny pickle assembler.
struct P(Vec<u8>);

impl P {
    fn new(proto: u8) -> Self {
        P(vec![op::PROTO, proto])
    }
    fn op(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    fn s(&mut self, s: &str) -> &mut Self {
        self.0.push(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: i32) -> &mut Self {
        self.0.push(op::BININT);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(op::GLOBAL);
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn ints(&mut self, v: &[i32]) -> &mut Self {
        self.op(op::MARK);
        for &i in v {
            self.int(i);
        }
        self.op(op::TUPLE)
    }
    /// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), off, size, stride,
    /// False, OrderedDict())` left on the stack.
    fn tensor(
        &mut self,
        class: &str,
        key: &str,
        numel: i32,
        off: i32,
        size: &[i32],
        stride: &[i32],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(op::MARK)
            .op(op::MARK);
        self.s("storage")
            .global("torch", class)
            .s(key)
            .s("cpu")
            .int(numel);
        self.op(op::TUPLE)
            .op(op::BINPERSID)
            .int(off)
            .ints(size)
            .ints(stride);
        self.op(op::NEWFALSE)
            .global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE);
        self.op(op::TUPLE).op(op::REDUCE)
    }
    fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
    }
    fn done(&mut self) -> Vec<u8> {
        self.op(op::STOP);
        std::mem::take(&mut self.0)
    }
}

fn make_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    make_zip_with(entries, CompressionMethod::Stored)
}

fn make_zip_with(entries: &[(&str, &[u8])], method: CompressionMethod) -> Vec<u8> {
    let mut z = ZipWriter::new(Cursor::new(Vec::new()));
    let o = SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        z.start_file(*name, o).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sample_records() -> Vec<TensorRecord> {
    let mut recs = vec![
        TensorRecord::from_f32(
            "conv.weight",
            vec![2, 1, 3],
            &[1.0, -2.5, 3.25, 0.0, 1e-8, -7.0],
        ),
        TensorRecord::from_f32("scalar", vec![], &[42.0]),
        TensorRecord::from_f32("empty", vec![0, 4], &[]),
    ];
    let ints = |dtype: DType, shape: Vec<usize>, n: usize| TensorRecord {
        name: format!("t_{}", dtype.torch_name()),
        dtype,
        shape,
        data: (0..n * dtype.size())
            .map(|i| (i * 37 % 251) as u8)
            .collect(),
    };
    for d in [
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
    ] {
        recs.push(ints(d, vec![3, 2, 2, 1, 2], 24));
    }
    recs.push(TensorRecord {
        name: "mask".into(),
        dtype: DType::Bool,
        shape: vec![3],
        data: vec![1, 0, 1],
    });
    recs
}

#[test]
fn write_then_read_roundtrips_exactly() {
    let recs = sample_records();
    let bytes = write_state_dict_bytes(&recs).unwrap();
    assert_eq!(read_state_dict_bytes(&bytes).unwrap(), recs);
    // deterministic
    assert_eq!(write_state_dict_bytes(&recs).unwrap(), bytes);
    assert!(read_state_dict_bytes(&write_state_dict_bytes(&[]).unwrap())
        .unwrap()
        .is_empty());
}

#[test]
fn written_archive_layout() {
    let recs = sample_records();
    let bytes = write_state_dict_bytes(&recs).unwrap();
    let mut z = ZipArchive::new(Cursor::new(bytes.as_slice())).unwrap();
    let names: Vec<String> = z.file_names().map(String::from).collect();
    for n in [
        "archive/data.pkl",
        "archive/version",
        "archive/byteorder",
        "archive/.data/serialization_id",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    for (i, r) in recs.iter().enumerate() {
        let f = z.by_name(&format!("archive/data/{i}")).unwrap();
        assert_eq!(f.compression(), CompressionMethod::Stored);
        assert_eq!(f.data_start() % 64, 0, "storage {i} not aligned");
        assert_eq!(f.size() as usize, r.data.len());
    }
    let mut v = String::new();
    std::io::Read::read_to_string(&mut z.by_name("archive/version").unwrap(), &mut v).unwrap();
    assert_eq!(v, "3\n");
}

#[test]
fn write_rejects_bad_records() {
    let mut recs = sample_records();
    recs[0].data.pop();
    assert!(write_state_dict_bytes(&recs).is_err());
    let dup = vec![TensorRecord::from_f32("a", vec![1], &[1.0]); 2];
    assert!(write_state_dict_bytes(&dup).is_err());
}

/// {"model": OrderedDict(w=transposed view, b=offset slice of the same storage,
///  p=Parameter(...), h=half via _rebuild_from_type_v2), "epoch": 3, "optimizer": junk}
fn wrapped_pickle(proto: u8) -> Vec<u8> {
    let mut p = P::new(proto);
    p.op(op::EMPTY_DICT).op(op::BINPUT).op(0).op(op::MARK);
    p.s("epoch").int(3);
    p.s("optimizer")
        .global("torch.optim.adam", "Adam")
        .op(op::EMPTY_TUPLE)
        .op(op::NEWOBJ);
    p.op(op::MARK)
        .s("lr")
        .op(op::BINFLOAT)
        .0
        .extend_from_slice(&1e-3f64.to_be_bytes());
    p.s("betas")
        .op(op::EMPTY_LIST)
        .op(op::LONG1)
        .op(1)
        .op(5)
        .op(op::APPEND)
        .op(op::DICT)
        .op(op::BUILD);
    p.s("model")
        .ordered_dict()
        .op(op::BINPUT)
        .op(1)
        .op(op::MARK);
    // storage "0" holds 0..12 as f32; w = storage[2:8].view(2,3).t()
    p.s("w")
        .tensor("FloatStorage", "0", 12, 2, &[3, 2], &[1, 3]);
    p.s("b").tensor("FloatStorage", "0", 12, 9, &[3], &[1]);
    p.s("p").global("torch._utils", "_rebuild_parameter");
    p.op(op::MARK)
        .tensor("FloatStorage", "0", 12, 0, &[2], &[1])
        .op(op::NEWTRUE);
    p.ordered_dict().op(op::TUPLE).op(op::REDUCE);
    p.s("h")
        .global("torch._tensor", "_rebuild_from_type_v2")
        .op(op::MARK);
    p.global("torch._utils", "_rebuild_tensor_v2")
        .global("torch", "Tensor");
    // inner args tuple of _rebuild_tensor_v2, built without REDUCE
    let mut inner = P(Vec::new());
    inner
        .op(op::MARK)
        .op(op::MARK)
        .s("storage")
        .global("torch", "HalfStorage")
        .s("1")
        .s("cpu")
        .int(2);
    inner
        .op(op::TUPLE)
        .op(op::BINPERSID)
        .int(0)
        .ints(&[2])
        .ints(&[1])
        .op(op::NEWFALSE);
    inner.ordered_dict().op(op::TUPLE);
    p.0.extend_from_slice(&inner.0);
    p.op(op::EMPTY_DICT).op(op::TUPLE).op(op::REDUCE);
    p.op(op::SETITEMS); // model entries
    p.op(op::EMPTY_DICT)
        .s("_metadata")
        .op(op::EMPTY_DICT)
        .op(op::SETITEM)
        .op(op::BUILD);
    p.op(op::SETITEMS); // top-level entries
    p.done()
}

fn wrapped_file(prefix: &str, pkl: &[u8]) -> Vec<u8> {
    wrapped_file_with(prefix, pkl, CompressionMethod::Stored)
}

fn wrapped_file_with(prefix: &str, pkl: &[u8], method: CompressionMethod) -> Vec<u8> {
    let s0 = f32_bytes(&(0..12).map(|i| i as f32).collect::<Vec<_>>());
    let s1 = [0x00u8, 0x3c, 0x00, 0xc0]; // half 1.0, -2.0
    make_zip_with(
        &[
            (&format!("{prefix}/data.pkl"), pkl),
            (&format!("{prefix}/byteorder"), b"little"),
            (&format!("{prefix}/data/0"), &s0),
            (&format!("{prefix}/data/1"), &s1),
            (&format!("{prefix}/version"), b"3\n"),
        ],
        method,
    )
}

#[test]
fn reads_wrapped_checkpoint_with_views_parameters_and_subclasses() {
    for proto in [2, 4] {
        let recs =
            read_state_dict_bytes(&wrapped_file("my_model", &wrapped_pickle(proto))).unwrap();
        let names: Vec<&str> = recs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["w", "b", "p", "h"]);
        assert_eq!(recs[0].shape, vec![3, 2]);
        assert_eq!(
            recs[0].to_f32_vec().unwrap(),
            vec![2.0, 5.0, 3.0, 6.0, 4.0, 7.0]
        );
        assert_eq!(recs[1].to_f32_vec().unwrap(), vec![9.0, 10.0, 11.0]);
        assert_eq!(recs[2].to_f32_vec().unwrap(), vec![0.0, 1.0]);
        assert_eq!(recs[3].dtype, DType::F16);
        assert_eq!(recs[3].to_f32_vec().unwrap(), vec![1.0, -2.0]);
    }
}

#[test]
fn reads_protocol4_opcodes() {
    let mut p = P::new(4);
    p.op(op::FRAME).0.extend_from_slice(&100u64.to_le_bytes());
    p.op(op::SHORT_BINUNICODE)
        .op(11)
        .0
        .extend_from_slice(b"collections");
    p.op(op::MEMOIZE)
        .op(op::SHORT_BINUNICODE)
        .op(11)
        .0
        .extend_from_slice(b"OrderedDict");
    p.op(op::MEMOIZE)
        .op(op::STACK_GLOBAL)
        .op(op::MEMOIZE)
        .op(op::EMPTY_TUPLE)
        .op(op::REDUCE);
    p.op(op::MEMOIZE).op(op::SHORT_BINUNICODE).op(1).op(b'x');
    p.tensor("LongStorage", "0", 1, 0, &[], &[]).op(op::SETITEM);
    let pkl = p.done();
    let data = 7i64.to_le_bytes();
    let file = make_zip(&[
        ("a/data.pkl", &pkl),
        ("a/data/0", &data),
        ("a/version", b"3\n"),
    ]);
    let recs = read_state_dict_bytes(&file).unwrap();
    assert_eq!(recs[0].dtype, DType::I64);
    assert!(recs[0].shape.is_empty());
    assert_eq!(recs[0].data, data);
}

#[test]
fn big_endian_storages_are_swapped() {
    let mut p = P::new(2);
    p.ordered_dict()
        .s("x")
        .tensor("IntStorage", "0", 2, 0, &[2], &[1])
        .op(op::SETITEM);
    let pkl = p.done();
    let data = [0, 0, 0, 1, 0, 0, 1, 0];
    let file = make_zip(&[
        ("a/data.pkl", &pkl),
        ("a/byteorder", b"big"),
        ("a/data/0", &data),
    ]);
    let recs = read_state_dict_bytes(&file).unwrap();
    assert_eq!(recs[0].data, [1, 0, 0, 0, 0, 1, 0, 0]);
}
