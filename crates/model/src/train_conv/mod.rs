//! 2-D convolution for every backbone, with our own backward kernels when a training pass runs
//! on flex.
//!
//! Inference, and training on other backends (tch, the GPU ones), run burn's `conv2d`
//! unchanged. A training pass on flex runs the same forward and, in the backward pass, the
//! direct/GEMM kernels of [`kernels`] instead of burn's default gradient composition (see
//! [`flex_op`] for why). The bias, when there is one, is added after the convolution, so its
//! gradient is autodiff's ordinary broadcast-add reduction.

#[cfg(feature = "flex")]
mod flex_op;
pub mod kernels;

use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

/// `conv2d(x, weight) + bias` — see the module docs for which kernels run.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if runs_on_flex_autodiff(&x) {
        let y = Tensor::<4>::from_dispatch(
            <burn::backend::Dispatch as flex_op::TrainConv>::train_conv2d(
                x.into_dispatch(),
                weight.into_dispatch(),
                options,
            ),
        );
        return match bias {
            Some(bias) => {
                let channels = bias.dims()[0];
                y.add(bias.reshape([1, channels, 1, 1]))
            }
            None => y,
        };
    }
    burn::tensor::module::conv2d(x, weight, bias, options)
}

#[cfg(feature = "flex")]
fn runs_on_flex_autodiff(x: &Tensor<4>) -> bool {
    use burn::backend::DispatchDevice;
    let device = x.device();
    device.is_autodiff()
        && matches!(
            device.as_dispatch().clone().inner(),
            DispatchDevice::Flex(_)
        )
}
