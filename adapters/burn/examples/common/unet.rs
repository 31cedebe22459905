//! The model of the `semi_supervised` example, shared with the training-step bench: a two-level
//! U-Net for grey images (13k parameters at width 12, 3 classes).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

#[derive(Module, Debug)]
pub(crate) struct UNet {
    enc1a: Conv2d,
    enc1b: Conv2d,
    pool: MaxPool2d,
    enc2a: Conv2d,
    enc2b: Conv2d,
    up: ConvTranspose2d,
    dec1: Conv2d,
    head: Conv2d,
    relu: Relu,
}

impl UNet {
    /// `width` channels at the first level, `classes` output logits.
    pub(crate) fn new(width: usize, classes: usize, device: &Device) -> Self {
        let conv = |i, o| Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Same).init(device);
        Self {
            enc1a: conv(1, width),
            enc1b: conv(width, width),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            enc2a: conv(width, 2 * width),
            enc2b: conv(2 * width, 2 * width),
            up: ConvTranspose2dConfig::new([2 * width, width], [2, 2]).with_stride([2, 2]).init(device),
            dec1: conv(2 * width, width),
            head: Conv2dConfig::new([width, classes], [1, 1]).init(device),
            relu: Relu::new(),
        }
    }

    /// Logits `[b, classes, H, W]` of grey images `[b, 1, H, W]` (H and W even).
    pub(crate) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let r = |t| self.relu.forward(t);
        let e1 = r(self.enc1b.forward(r(self.enc1a.forward(x))));
        let e2 = r(self.enc2b.forward(r(self.enc2a.forward(self.pool.forward(e1.clone())))));
        let u = r(self.up.forward(e2));
        let d = r(self.dec1.forward(Tensor::cat(vec![e1, u], 1)));
        self.head.forward(d)
    }
}
