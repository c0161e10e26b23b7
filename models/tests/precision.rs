//! Inference precisions: the refusal of bf16 on a CPU without native bfloat16 (the decision
//! function, on this machine's real flags and with the test-only override), and the float32
//! channels-last inference path against the default-layout network it replaces (its
//! GroupNorm, then the whole network). The MONAI fidelity of the exact path is `golden.rs`;
//! the bf16 agreement on a trained network is `bench/bench_infer.py --trained-bundle`.

use ferrolabel_models::device::{check_precision, cpu_has_bf16, PRETEND_NO_BF16_ENV};
use ferrolabel_models::network::segresnet::{
    channels_last, channels_last_group_norm, is_channels_last,
};
use ferrolabel_models::network::{SegResNet, SegResNetConfig};
use ferrolabel_models::{Device, ModelsError, Precision};
use tch::{nn, Kind, Tensor};

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

/// The exact float32 GroupNorm of the channels-last inference path against libtorch's
/// default-layout kernel (what MONAI runs): odd sizes, a batch of 2, several group counts,
/// and activations far from zero mean (where `E[x^2] - E[x]^2` would cancel).
#[test]
fn channels_last_group_norm_matches_the_default_layout_kernel() {
    tch::manual_seed(3);
    for (c, groups, offset) in [(16, 8, 0.0), (24, 8, 100.0), (12, 4, -7.5)] {
        let x = Tensor::randn([2, c, 5, 7, 9], (Kind::Float, Device::Cpu)) * 2.0 + offset;
        let w = Tensor::rand([c], (Kind::Float, Device::Cpu)) + 0.5;
        let b = Tensor::randn([c], (Kind::Float, Device::Cpu)) * 0.1;
        let reference = x.group_norm(groups, Some(&w), Some(&b), 1e-5, false);
        let cl = channels_last(&x);
        let ours = channels_last_group_norm(&cl, groups, &w, &b, 1e-5);
        assert!(is_channels_last(&ours), "the output stays channels-last");
        let d = f64::try_from((&ours - &reference).abs().max()).unwrap();
        eprintln!("c {c} groups {groups} offset {offset}: max |diff| {d:e}");
        assert!(d <= 1e-5, "channels-last GroupNorm differs by {d}");
    }
}

/// The float32 inference path (channels-last weights, oneDNN called directly, 1x1x1
/// convolutions as matrix products, the exact GroupNorm) gives the default-layout logits
/// within the golden tolerance, channels-last, for a single window and a batch of two.
#[test]
fn fp32_inference_path_matches_the_default_layout_network() {
    tch::manual_seed(5);
    let cfg = SegResNetConfig {
        in_channels: 1,
        out_channels: 105,
        init_filters: 8,
        blocks_down: vec![1, 2, 2, 4],
        blocks_up: vec![1, 1, 1],
        dropout_prob: None,
        norm_groups: 8,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = SegResNet::new(&vs.root(), &cfg);
    // non-trivial norm and bias parameters, as trained weights have
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if t.dim() == 1 {
                let r = Tensor::rand_like(&t);
                if name.ends_with("weight") {
                    t.copy_(&(r + 0.5));
                } else {
                    t.copy_(&((r - 0.5) * 0.4));
                }
            }
        }
    });
    for batch in [1, 2] {
        let x = Tensor::randn([batch, 1, 24, 16, 32], (Kind::Float, Device::Cpu));
        net.set_inference(None);
        let reference = tch::no_grad(|| net.forward_t(&x, false));
        net.set_inference(Some(Precision::Fp32));
        let fast = tch::no_grad(|| net.forward_t(&x, false));
        net.set_inference(None);
        assert_eq!(fast.size(), reference.size());
        assert!(is_channels_last(&fast), "channels-last logits");
        let d = f64::try_from((&fast - &reference).abs().max()).unwrap();
        let scale = f64::try_from(reference.abs().max()).unwrap();
        eprintln!("batch {batch}: max |logit diff| {d:e} (logits up to {scale:.2})");
        assert!(d <= 1e-4, "fp32 inference path differs by {d}");
    }
}
