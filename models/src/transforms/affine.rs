//! Affine maths done with libtorch float64 ops, the same ops MONAI runs, so results match it
//! to the last bit wherever MONAI uses torch (and to round-off where it uses numpy).

use ferrolabel_imaging::Affine;
use tch::{Device, Kind, Tensor};

/// A 4x4 float64 tensor from an affine.
pub fn to_tensor(a: &Affine) -> Tensor {
    let flat: Vec<f64> = a.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([4, 4])
}

/// An affine from a 4x4 float64 tensor.
pub fn from_tensor(t: &Tensor) -> Affine {
    let t = t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous();
    let v: Vec<f64> = Vec::<f64>::try_from(t.view([-1])).unwrap_or_else(|_| vec![0.0; 16]);
    let mut a = [[0.0; 4]; 4];
    for (i, row) in a.iter_mut().enumerate() {
        row.copy_from_slice(&v[i * 4..i * 4 + 4]);
    }
    a
}

/// `a @ b` for 4x4 affines (float64 libtorch matmul).
pub fn matmul(a: &Affine, b: &Affine) -> Affine {
    from_tensor(&to_tensor(a).matmul(&to_tensor(b)))
}

/// `solve(a, b)` = `inv(a) @ b` (LU solve), or `None` when `a` is singular.
pub fn solve(a: &Affine, b: &Affine) -> Option<Affine> {
    let (x, info) = Tensor::linalg_solve_ex(&to_tensor(a), &to_tensor(b), true, false);
    if i64::try_from(&info).unwrap_or(1) != 0 {
        return None;
    }
    let x = from_tensor(&x);
    x.iter().flatten().all(|v| v.is_finite()).then_some(x)
}

/// numpy.allclose(a, b, rtol=0, atol)
pub fn allclose(a: &Affine, b: &Affine, atol: f64) -> bool {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .all(|(x, y)| (x - y).abs() <= atol + 1e-5 * y.abs())
}
