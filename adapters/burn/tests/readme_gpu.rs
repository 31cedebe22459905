//! The README's burn-on-GPU example, run: device setup, a model, the loss, backward, an
//! optimiser step, all on burn's wgpu device with the loss on the device path.
#![cfg(feature = "wgpu")]

#[test]
fn readme_burn_on_gpu() -> Result<(), Box<dyn std::error::Error>> {
    // --- README: burn on the GPU ---
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::{Distribution, Tensor};
    use msloss_burn::{MsLoss, Path};
    use msloss_core::Params;

    // burn's default wgpu device, opened by msloss so the loss can share its queue and buffers.
    let device = msloss_burn::gpu::default_device()?.autodiff();
    let model = Conv2dConfig::new([1, 3], [3, 3]).with_padding(PaddingConfig2d::Same).init(&device);
    let mut optim = AdamConfig::new().init();
    let loss = MsLoss::new(Params::default().with_lambda(0.05));
    let image = Tensor::<4>::random([2, 1, 32, 32], Distribution::Uniform(0.0, 1.0), &device);

    let mut model = model;
    for _step in 0..3 {
        let logits = model.forward(image.clone()); // [B, N = 3, H, W]
        let total = loss.forward(logits, image.clone(), None)?; // on the GPU, no host copy
        let grads = GradientsParams::from_grads(total.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    loss.check()?; // reads the device's input checks (one 16-byte read); Err on NaN inputs
    assert_eq!(loss.last().1.path, Path::Device);
    // --- end ---
    Ok(())
}
