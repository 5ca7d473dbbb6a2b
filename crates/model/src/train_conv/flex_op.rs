//! The training convolution as a burn backend extension on flex: the forward pass is flex's own
//! `conv2d`; the backward pass (registered with burn's autodiff) runs our kernels
//! ([`super::kernels`]) and falls back to burn's default gradients for what they do not cover
//! (another dtype, a grouping other than 1 or depthwise).
//!
//! burn's default convolution backward — the one every backend inherits — computes the weight
//! gradient as a forward convolution with the output gradient as its kernel, one batch-1
//! convolution per group for depthwise layers. It was 61 % of a Lite0 train step's
//! instructions (`tools/profile_train_step.sh`); an extension is how burn lets a model replace
//! an operation's backward without a fork.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, TensorData};

use super::kernels::{self, ConvGeometry};

/// A bias-free 2-D convolution whose backward pass is ours.
#[backend_extension(Flex, Autodiff)]
pub trait TrainConv: Backend {
    fn train_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

impl TrainConv for Flex {
    fn train_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        Flex::conv2d(x, weight, None, options)
    }
}

impl<C: CheckpointStrategy> TrainConv for Autodiff<Flex, C> {
    fn train_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match TrainConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let output = Flex::conv2d(
                    x.into_primitive(),
                    weight.into_primitive(),
                    None,
                    options.clone(),
                );
                prep.finish((x_state, weight_state, options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                None,
                options,
            )),
        }
    }
}

#[derive(Debug)]
struct TrainConvBackward;

impl Backward<Flex, 2> for TrainConvBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
        let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight_state);

        if let Some(node) = node_x {
            let grad = input_grad(&x, &weight, &gy, &options).unwrap_or_else(|| {
                Flex::conv2d_x_backward(x.clone(), weight.clone(), gy.clone(), options.clone())
            });
            grads.register::<Flex>(node.id, grad);
        }
        if let Some(node) = node_weight {
            let grad = weight_grad(&x, &weight, &gy, &options)
                .unwrap_or_else(|| Flex::conv2d_weight_backward(x, weight, gy, options));
            grads.register::<Flex>(node.id, grad);
        }
    }
}

fn input_grad(
    x: &FlexTensor,
    weight: &FlexTensor,
    gy: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let geometry = geometry(x, weight, gy, options)?;
    let (weight, gy) = (weight.to_contiguous(), gy.to_contiguous());
    let dx = kernels::input_grad(weight.as_slice::<f32>()?, gy.as_slice::<f32>()?, &geometry)?;
    Some(FlexTensor::from_data(TensorData::new(dx, x.shape())))
}

fn weight_grad(
    x: &FlexTensor,
    weight: &FlexTensor,
    gy: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let geometry = geometry(x, weight, gy, options)?;
    let (x, gy) = (x.to_contiguous(), gy.to_contiguous());
    let dw = kernels::weight_grad(x.as_slice::<f32>()?, gy.as_slice::<f32>()?, &geometry)?;
    Some(FlexTensor::from_data(TensorData::new(dw, weight.shape())))
}

/// The kernels' view of this convolution, or `None` when it is not an f32 one.
fn geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    gy: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    if [x.dtype(), weight.dtype(), gy.dtype()] != [DType::F32; 3] {
        return None;
    }
    let [batch, in_channels, in_h, in_w] = x.shape().dims();
    let [out_channels, _, kernel_h, kernel_w] = weight.shape().dims();
    let [_, _, out_h, out_w] = gy.shape().dims();
    Some(ConvGeometry {
        batch,
        in_channels,
        in_h,
        in_w,
        out_channels,
        kernel_h,
        kernel_w,
        out_h,
        out_w,
        stride: options.stride,
        pad_begin: options.padding_begin(),
        dilation: options.dilation,
        groups: options.groups,
    })
}
