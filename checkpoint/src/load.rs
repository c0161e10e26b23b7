//! From an unpickled object graph to contiguous [`TensorRecord`]s.

use crate::archive::Archive;
use crate::error::{CheckpointError, Result};
use crate::pickle::{read::unpickle, Dict, Object, StorageRef, TensorMeta, Unpickled};
use crate::tensor::{DType, TensorRecord};
use std::borrow::Cow;
use std::collections::HashMap;

/// Tensor data produced may exceed the file size by this factor (shared storages and
/// broadcast strides legitimately expand), plus [`OUTPUT_SLACK`] bytes.
pub(crate) const OUTPUT_FACTOR: usize = 4;
const OUTPUT_SLACK: usize = 1 << 20;

/// Reads the state_dict of an in-memory `torch.save` file.
pub(crate) fn read_bytes(bytes: &[u8]) -> Result<Vec<TensorRecord>> {
    let mut archive = Archive::open(bytes)?;
    let big_endian = if archive.has_record("byteorder") {
        match archive.record("byteorder")?.as_ref() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(CheckpointError::NotCheckpoint(format!(
                    "unknown byteorder {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    } else {
        false
    };
    let pkl = archive.record("data.pkl")?;
    let graph = unpickle(&pkl)?;
    drop(pkl);
    let sd = select_state_dict(&graph)?;
    let mut budget = bytes
        .len()
        .saturating_mul(OUTPUT_FACTOR)
        .saturating_add(OUTPUT_SLACK);
    let mut storages: HashMap<&str, Cow<'_, [u8]>> = HashMap::new();
    let mut out = Vec::with_capacity(sd.entries.len());
    for &(k, v) in &sd.entries {
        let name = graph.as_str(k).ok_or_else(|| {
            CheckpointError::NotStateDict(format!(
                "a key is not a str (found {})",
                graph.type_name(k)
            ))
        })?;
        let meta = match graph.obj(v) {
            Some(Object::Tensor(t)) => t,
            _ => {
                return Err(CheckpointError::NotStateDict(format!(
                    "entry {name:?} is not a tensor (found {})",
                    graph.type_name(v)
                )))
            }
        };
        let Some(Object::Storage(storage)) = graph.objects.get(meta.storage) else {
            return Err(CheckpointError::tensor(name, "storage reference is broken"));
        };
        let dtype = DType::from_storage_class(&storage.class).ok_or_else(|| {
            CheckpointError::tensor(
                name,
                format!("unsupported storage type torch.{}", storage.class),
            )
        })?;
        if !storages.contains_key(storage.key.as_str()) {
            let data = archive.record(&format!("data/{}", storage.key))?;
            if let Cow::Owned(o) = &data {
                charge(&mut budget, o.len())?;
            }
            storages.insert(storage.key.as_str(), data);
        }
        let raw = storages
            .get(storage.key.as_str())
            .map(|c| c.as_ref())
            .unwrap_or_default();
        let (shape, mut data) = gather(name, raw, storage, dtype, meta, &mut budget)?;
        if big_endian && dtype.size() > 1 {
            for el in data.chunks_exact_mut(dtype.size()) {
                el.reverse();
            }
        }
        out.push(TensorRecord {
            name: name.to_string(),
            dtype,
            shape,
            data,
        });
    }
    Ok(out)
}

/// The state_dict inside the unpickled object: the object itself, or its `"model"` or
/// `"state_dict"` entry when that is a dict (MONAI / Lightning-style wrappers).
fn select_state_dict(g: &Unpickled) -> Result<&Dict> {
    let root = g.as_dict(g.root).ok_or_else(|| {
        CheckpointError::NotStateDict(format!(
            "the saved object is not a dict (found {})",
            g.type_name(g.root)
        ))
    })?;
    for key in ["model", "state_dict"] {
        if let Some(d) = g.dict_get(root, key).and_then(|v| g.as_dict(v)) {
            return Ok(d);
        }
    }
    Ok(root)
}

fn charge(budget: &mut usize, bytes: usize) -> Result<()> {
    *budget = budget.checked_sub(bytes).ok_or_else(|| {
        CheckpointError::TooLarge(format!(
            "tensor data would exceed {OUTPUT_FACTOR}x the file size"
        ))
    })?;
    Ok(())
}

/// Copies the strided view `meta` of `raw` into a contiguous C-order buffer.
fn gather(
    name: &str,
    raw: &[u8],
    storage: &StorageRef,
    dtype: DType,
    meta: &TensorMeta,
    budget: &mut usize,
) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |msg: String| CheckpointError::tensor(name, msg);
    let es = dtype.size();
    let storage_bytes = usize::try_from(storage.numel)
        .ok()
        .and_then(|n| n.checked_mul(es))
        .ok_or_else(|| bad("storage size overflows".into()))?;
    if raw.len() < storage_bytes {
        return Err(bad(format!(
            "storage {} holds {} bytes, {} elements of {} need {storage_bytes}",
            storage.key,
            raw.len(),
            storage.numel,
            dtype.torch_name()
        )));
    }
    let shape: Vec<usize> = meta
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("size overflows usize".into()))?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("size {shape:?} overflows")))?;
    let out_bytes = numel
        .checked_mul(es)
        .ok_or_else(|| bad(format!("size {shape:?} overflows")))?;
    charge(budget, out_bytes)?;
    if numel == 0 {
        return Ok((shape, Vec::new()));
    }
    // the largest element index the view touches must lie inside the storage
    let mut last = meta.offset;
    for (&d, &s) in meta.shape.iter().zip(&meta.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| bad("view extent overflows".into()))?;
    }
    if last >= storage.numel {
        return Err(bad(format!(
            "view (offset {}, size {shape:?}, stride {:?}) reaches element {last} of a \
             storage of {}",
            meta.offset, meta.stride, storage.numel
        )));
    }
    // every index below is at most `last` < storage.numel, so all slices are in bounds
    let offset = meta.offset as usize;
    let stride: Vec<usize> = meta.stride.iter().map(|&s| s as usize).collect();
    let mut data = Vec::with_capacity(out_bytes);
    if is_contiguous(&shape, &stride) {
        data.extend_from_slice(&raw[offset * es..(offset + numel) * es]);
        return Ok((shape, data));
    }
    let nd = shape.len();
    let (inner_n, inner_s) = (shape[nd - 1], stride[nd - 1]);
    let mut idx = vec![0usize; nd - 1];
    loop {
        let base = offset + idx.iter().zip(&stride).map(|(&i, &s)| i * s).sum::<usize>();
        if inner_s == 1 {
            data.extend_from_slice(&raw[base * es..(base + inner_n) * es]);
        } else {
            for j in 0..inner_n {
                let at = (base + j * inner_s) * es;
                data.extend_from_slice(&raw[at..at + es]);
            }
        }
        // odometer over the outer dimensions, last fastest
        let mut dim = nd - 1;
        loop {
            if dim == 0 {
                return Ok((shape, data));
            }
            dim -= 1;
            idx[dim] += 1;
            if idx[dim] < shape[dim] {
                break;
            }
            idx[dim] = 0;
        }
    }
}

/// Whether a view with these strides is C-contiguous (size-1 dimensions may have any stride).
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(numel: u64) -> StorageRef {
        StorageRef {
            class: "ByteStorage".into(),
            key: "0".into(),
            numel,
        }
    }

    fn view(offset: u64, shape: &[u64], stride: &[u64]) -> TensorMeta {
        TensorMeta {
            storage: 0,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn gathers_transposed_offset_and_broadcast_views() {
        let raw: Vec<u8> = (0..24).collect();
        let st = storage(24);
        let mut budget = 1 << 20;
        let g = |m: &TensorMeta, b: &mut usize| gather("t", &raw, &st, DType::U8, m, b);
        // 2x3 transposed view of a 3x2 matrix starting at element 4
        let (shape, d) = g(&view(4, &[2, 3], &[1, 2]), &mut budget).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(d, vec![4, 6, 8, 5, 7, 9]);
        // contiguous slice
        let (_, d) = g(&view(10, &[2, 2], &[2, 1]), &mut budget).unwrap();
        assert_eq!(d, vec![10, 11, 12, 13]);
        // broadcast (stride 0) and scalar
        let (_, d) = g(&view(3, &[2, 2], &[0, 1]), &mut budget).unwrap();
        assert_eq!(d, vec![3, 4, 3, 4]);
        let (shape, d) = g(&view(23, &[], &[]), &mut budget).unwrap();
        assert!(shape.is_empty());
        assert_eq!(d, vec![23]);
        // 3-D permuted
        let (_, d) = g(&view(0, &[2, 2, 2], &[1, 8, 4]), &mut budget).unwrap();
        assert_eq!(d, vec![0, 4, 8, 12, 1, 5, 9, 13]);
        // empty
        let (_, d) = g(&view(99, &[0, 5], &[5, 1]), &mut budget).unwrap();
        assert!(d.is_empty());
    }

    #[test]
    fn rejects_out_of_bounds_views_and_budget_overruns() {
        let raw: Vec<u8> = (0..24).collect();
        let st = storage(24);
        let mut budget = 1 << 20;
        assert!(gather(
            "t",
            &raw,
            &st,
            DType::U8,
            &view(20, &[5], &[1]),
            &mut budget
        )
        .is_err());
        assert!(gather(
            "t",
            &raw,
            &st,
            DType::U8,
            &view(0, &[3, 9], &[9, 1]),
            &mut budget
        )
        .is_err());
        let huge = view(0, &[u64::MAX / 2, 4], &[0, 0]);
        assert!(gather("t", &raw, &st, DType::U8, &huge, &mut budget).is_err());
        let mut small = 10;
        assert!(matches!(
            gather(
                "t",
                &raw,
                &st,
                DType::U8,
                &view(0, &[1000], &[0]),
                &mut small
            ),
            Err(CheckpointError::TooLarge(_))
        ));
        let short = storage(100);
        assert!(gather(
            "t",
            &raw,
            &short,
            DType::U8,
            &view(0, &[1], &[1]),
            &mut budget
        )
        .is_err());
    }
}
