//! Malformed, truncated and hostile inputs: always an error, never a panic or a huge
//! allocation.

use super::{
    make_zip, make_zip_with, sample_records, wrapped_file, wrapped_file_with, wrapped_pickle, P,
};
use crate::pickle::op;
use crate::{read_state_dict_bytes, write_state_dict_bytes, CheckpointError};
use zip::CompressionMethod;

fn err_of(bytes: &[u8]) -> CheckpointError {
    read_state_dict_bytes(bytes).expect_err("should fail")
}

#[test]
fn format_errors() {
    let legacy = [
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];
    assert!(matches!(err_of(&legacy), CheckpointError::LegacyFormat));
    assert!(err_of(&legacy)
        .to_string()
        .contains("re-save with a recent PyTorch"));
    assert!(matches!(
        err_of(b"hello"),
        CheckpointError::NotCheckpoint(_)
    ));
    assert!(matches!(err_of(b""), CheckpointError::NotCheckpoint(_)));
    let pkl = P::new(2).ordered_dict().done();
    let ts = make_zip(&[
        ("m/data.pkl", &pkl),
        ("m/constants.pkl", &pkl),
        ("m/code/__torch__/m.py", b""),
    ]);
    assert_eq!(
        err_of(&ts).to_string(),
        "TorchScript archive, not a state_dict"
    );
    let no_pkl = make_zip(&[("m/version", b"3\n")]);
    assert!(matches!(err_of(&no_pkl), CheckpointError::MissingRecord(_)));
    let mut corrupt = wrapped_file("m", &wrapped_pickle(2));
    let pos = corrupt
        .windows(4)
        .position(|w| w == 11f32.to_le_bytes())
        .unwrap();
    corrupt[pos] ^= 1;
    assert!(err_of(&corrupt).to_string().contains("CRC"));
}

fn pickle_err(pkl: &[u8]) -> CheckpointError {
    let data = [0u8; 64];
    err_of(&make_zip(&[("a/data.pkl", pkl), ("a/data/0", &data)]))
}

#[test]
fn pickle_errors() {
    let e = pickle_err(&[op::PROTO, 2, b'I', b'1', b'\n', op::STOP]);
    assert!(e.to_string().contains("INT"), "{e}");
    assert!(matches!(
        e,
        CheckpointError::UnsupportedOpcode {
            opcode: b'I',
            offset: 2,
            ..
        }
    ));
    let cases: Vec<Vec<u8>> = vec![
        vec![op::PROTO, 2, op::EMPTY_DICT],          // truncated
        vec![op::PROTO, 2, op::STOP],                // empty stack
        vec![op::PROTO, 2, op::BINGET, 7, op::STOP], // memo miss
        vec![
            op::PROTO,
            2,
            op::EMPTY_DICT,
            op::MARK,
            op::SETITEM,
            op::STOP,
        ], // under mark
        vec![op::PROTO, 2, op::MARK, op::SETITEMS, op::STOP], // no target
        vec![
            op::PROTO,
            2,
            op::NONE,
            op::EMPTY_TUPLE,
            op::REDUCE,
            op::STOP,
        ], // None()
        vec![op::PROTO, 9, op::NONE, op::STOP],      // protocol
        P::new(2).int(3).done(),                     // not a dict
        P::new(2)
            .ordered_dict()
            .s("a")
            .int(1)
            .op(op::SETITEM)
            .done(), // not a tensor
        P::new(2)
            .ordered_dict()
            .s("a")
            .tensor("FloatStorage", "0", 4, 2, &[3], &[1])
            .op(op::SETITEM)
            .done(),
        P::new(2)
            .ordered_dict()
            .s("a")
            .tensor("ComplexFloatStorage", "0", 4, 0, &[1], &[1])
            .op(op::SETITEM)
            .done(),
        P::new(2)
            .ordered_dict()
            .s("a")
            .tensor("FloatStorage", "9", 4, 0, &[1], &[1])
            .op(op::SETITEM)
            .done(),
        P::new(2)
            .ordered_dict()
            .s("a")
            .tensor("FloatStorage", "0", 4, 0, &[1, 2], &[1])
            .op(op::SETITEM)
            .done(),
        P::new(2)
            .ordered_dict()
            .s("a")
            .tensor("FloatStorage", "0", 4, -1, &[1], &[1])
            .op(op::SETITEM)
            .done(),
        P::new(2)
            .ordered_dict()
            .s("a")
            .s("notastorage")
            .op(op::BINPERSID)
            .op(op::SETITEM)
            .done(),
        P::new(2)
            .global("torch._utils", "_rebuild_parameter")
            .ints(&[1])
            .op(op::REDUCE)
            .done(),
    ];
    for (i, c) in cases.iter().enumerate() {
        let e = pickle_err(c);
        assert!(
            !matches!(e, CheckpointError::UnsupportedOpcode { .. }),
            "case {i}: {e}"
        );
    }
}

#[test]
fn allocation_is_bounded() {
    // a 16-element storage viewed with stride 0 as 10^9 elements
    let pkl = P::new(2)
        .ordered_dict()
        .s("a")
        .tensor("FloatStorage", "0", 16, 0, &[1_000_000_000], &[0])
        .op(op::SETITEM)
        .done();
    assert!(matches!(pickle_err(&pkl), CheckpointError::TooLarge(_)));
    // the same tensor under many names (memo references cost 2 bytes each)
    let mut p = P::new(2);
    p.ordered_dict()
        .op(op::MARK)
        .s("k0")
        .tensor("FloatStorage", "0", 16, 0, &[4000], &[0]);
    p.op(op::BINPUT).op(1);
    for i in 1..2000 {
        p.s(&format!("k{i}")).op(op::BINGET).op(1);
    }
    assert!(matches!(
        pickle_err(&p.op(op::SETITEMS).done()),
        CheckpointError::TooLarge(_)
    ));
    // OrderedDict(list) copies: a big list re-used by many REDUCEs
    let mut p = P::new(2);
    p.s("k")
        .int(1)
        .op(op::TUPLE2)
        .op(op::BINPUT)
        .op(0)
        .op(op::EMPTY_LIST)
        .op(op::MARK);
    for _ in 0..100_000 {
        p.op(op::BINGET).op(0);
    }
    p.op(op::APPENDS)
        .op(op::TUPLE1)
        .op(op::BINPUT)
        .op(1)
        .op(op::POP);
    for _ in 0..2000 {
        p.global("collections", "OrderedDict")
            .op(op::BINGET)
            .op(1)
            .op(op::REDUCE)
            .op(op::POP);
    }
    let e = pickle_err(&p.ordered_dict().done());
    assert!(matches!(e, CheckpointError::TooLarge(_)), "{e}");
}

/// Deterministic mutation fuzzing: any outcome but a panic is fine.
#[test]
fn mutated_inputs_never_panic() {
    let pkl = wrapped_pickle(2);
    let file = wrapped_file("m", &pkl);
    let written = write_state_dict_bytes(&sample_records()).unwrap();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for len in 0..pkl.len() {
        let _ = crate::pickle::read::unpickle(&pkl[..len]);
    }
    for _ in 0..3000 {
        let mut p = pkl.clone();
        for _ in 0..1 + rnd() % 4 {
            let i = (rnd() % p.len() as u64) as usize;
            p[i] = rnd() as u8;
        }
        let _ = read_state_dict_bytes(&wrapped_file("m", &p));
        let src = if rnd() % 2 == 0 { &file } else { &written };
        let mut f = src.clone();
        let i = (rnd() % f.len() as u64) as usize;
        f[i] = rnd() as u8;
        let _ = read_state_dict_bytes(&f);
        let _ = read_state_dict_bytes(&f[..(rnd() % f.len() as u64) as usize]);
    }
}

/// A zip64 end record claiming 2^33 entries at offset 2^36 in a 162-byte file.
fn zip64_bomb() -> Vec<u8> {
    let n: u64 = 1 << 33;
    let mut f = b"PK\x03\x04".to_vec();
    f.resize(64, 0);
    let z64_at = f.len() as u64;
    f.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
    f.extend_from_slice(&44u64.to_le_bytes());
    f.extend_from_slice(&45u16.to_le_bytes());
    f.extend_from_slice(&45u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    for v in [n, n, 46 * n, 1 << 36] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&z64_at.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    f.extend_from_slice(&[0xff; 8]);
    f.extend_from_slice(&[0xff; 8]);
    f.extend_from_slice(&[0; 2]);
    f
}

#[test]
fn oversized_zip_directories_are_rejected() {
    // the zip crate bounds its central directory allocation by the file size
    assert!(matches!(err_of(&zip64_bomb()), CheckpointError::Zip(_)));
}

#[test]
fn reads_deflated_records_within_limits() {
    let file = wrapped_file_with("m", &wrapped_pickle(2), CompressionMethod::Deflated);
    let stored = wrapped_file("m", &wrapped_pickle(2));
    assert_eq!(
        read_state_dict_bytes(&file).unwrap(),
        read_state_dict_bytes(&stored).unwrap()
    );
    // 64 MiB of zeros deflate to ~64 KiB: more than 4x the file size once inflated
    let pkl = P::new(2)
        .ordered_dict()
        .s("z")
        .tensor("ByteStorage", "0", 64 << 20, 0, &[4], &[1])
        .op(op::SETITEM)
        .done();
    let zeros = vec![0u8; 64 << 20];
    let bomb = make_zip_with(
        &[("a/data.pkl", &pkl), ("a/data/0", &zeros)],
        CompressionMethod::Deflated,
    );
    assert!(bomb.len() < 1 << 20);
    assert!(matches!(err_of(&bomb), CheckpointError::TooLarge(_)));
}
