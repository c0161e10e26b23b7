//! The refusal of bf16 on a CPU without native bfloat16 (the decision function, on this
//! machine's real flags and with the test-only override). The MONAI fidelity of the exact
//! path is `golden.rs`.

use ferrolabel_models::device::{check_precision, cpu_has_bf16, PRETEND_NO_BF16_ENV};
use ferrolabel_models::{Device, ModelsError, Precision};

#[test]
fn bf16_is_refused_on_a_cpu_without_native_bf16() {
    // the decision itself, on the real flags of this machine
    assert_eq!(
        check_precision(Precision::Bf16, Device::Cpu).is_ok(),
        cpu_has_bf16()
    );
    assert!(check_precision(Precision::Fp32, Device::Cpu).is_ok());
    // the test-only override pretends the flags are missing
    std::env::set_var(PRETEND_NO_BF16_ENV, "1");
    let err = check_precision(Precision::Bf16, Device::Cpu).unwrap_err();
    std::env::remove_var(PRETEND_NO_BF16_ENV);
    assert!(matches!(err, ModelsError::Invalid(_)));
    assert!(err.to_string().contains("bf16"), "{err}");
}
