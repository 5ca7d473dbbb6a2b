//! The geometry of one 2-D convolution (NCHW, contiguous) as the forward and gradient kernels
//! see it: sizes, the valid output range of each kernel tap (so inner loops carry no bounds
//! tests), one walk over taps × output rows, and the im2col patch matrix.

use rayon::prelude::*;

/// Where an activation's channels lie in memory. The kernels take NCHW (`First`, burn's
/// layout); the depthwise ones also take NHWC (`Last`): ConvNeXt's residual stream is
/// channels-last between its LayerNorms and MLPs, and reading it there saves the two full
/// copies per block (into NCHW for the depthwise convolution, back to NHWC for the LayerNorm)
/// that were 8 % of a ConvNeXt-tiny train step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    First,
    Last,
}

/// Shape and options of one convolution; `out_h`/`out_w` are the output gradient's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub stride: [usize; 2],
    /// Padding before each spatial dimension (the padding after is implied by the sizes).
    pub pad_begin: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl ConvGeometry {
    pub(super) fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }

    /// A 1×1, stride-1, unpadded convolution: the image is its own im2col matrix.
    pub(super) fn is_plain_pointwise(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.stride == [1, 1]
            && self.pad_begin == [0, 0]
            && self.out_h == self.in_h
            && self.out_w == self.in_w
    }

    pub(super) fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    pub(super) fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Rows of the im2col matrix: `in_channels · kernel_h · kernel_w`.
    pub(super) fn col_rows(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }

    /// The output positions `o` whose input index `o·stride + tap·dilation − pad` lies inside
    /// `[0, size)`, as a half-open range, for dimension `dim`.
    pub(super) fn valid_outputs(&self, dim: usize, tap: usize) -> (usize, usize) {
        let (size, out) = if dim == 0 {
            (self.in_h, self.out_h)
        } else {
            (self.in_w, self.out_w)
        };
        let offset = (tap * self.dilation[dim]) as isize - self.pad_begin[dim] as isize;
        let stride = self.stride[dim] as isize;
        // o·stride + offset >= 0  and  o·stride + offset < size
        let first = if offset >= 0 {
            0
        } else {
            ((-offset) + stride - 1) / stride
        };
        let end = if (size as isize) <= offset {
            0
        } else {
            ((size as isize - offset) + stride - 1) / stride
        };
        let first = (first as usize).min(out);
        (first, (end as usize).clamp(first, out))
    }

    pub(super) fn input_index(&self, dim: usize, out: usize, tap: usize) -> usize {
        out * self.stride[dim] + tap * self.dilation[dim] - self.pad_begin[dim]
    }

    /// Calls `f` for every kernel tap (row-major over `kernel_h × kernel_w`) and every output row
    /// that tap reaches inside the input, in that order: the one walk over the geometry that
    /// the depthwise kernels, im2col and col2im share.
    pub(super) fn for_each_tap_row(&self, mut f: impl FnMut(TapRow)) {
        for kh in 0..self.kernel_h {
            let (oh0, oh1) = self.valid_outputs(0, kh);
            for kw in 0..self.kernel_w {
                let (ow0, ow1) = self.valid_outputs(1, kw);
                if ow0 >= ow1 {
                    continue;
                }
                let iw0 = self.input_index(1, ow0, kw);
                for oh in oh0..oh1 {
                    f(TapRow {
                        tap: kh * self.kernel_w + kw,
                        out: oh * self.out_w + ow0..oh * self.out_w + ow1,
                        input: self.input_index(0, oh, kh) * self.in_w + iw0,
                    });
                }
            }
        }
    }
}

/// One output row of one kernel tap: its valid outputs as a range of the output plane, and the
/// input-plane index the first of them reads (the next ones read every `stride[1]`-th value).
pub(super) struct TapRow {
    pub tap: usize,
    pub out: std::ops::Range<usize>,
    pub input: usize,
}

/// Writes image `x_n`'s `[in_channels · kh · kw, out_h · out_w]` patch matrix into `col`
/// (zeros where a tap falls in the padding), its channels in parallel when `parallel` (a single
/// image whose GEMM is split across the threads: otherwise one thread writes the whole matrix
/// while the others wait).
///
/// `col` must be empty or hold an earlier patch matrix of this same geometry (the callers keep
/// one buffer per task of one convolution): the padding positions are the same for every image,
/// so a buffer of the right length is not zeroed again, only its valid positions overwritten.
pub(super) fn im2col(x_n: &[f32], g: &ConvGeometry, col: &mut Vec<f32>, parallel: bool) {
    let (p, taps) = (g.out_plane(), g.kernel_h * g.kernel_w);
    if col.len() != g.col_rows() * p {
        col.clear();
        col.resize(g.col_rows() * p, 0.0);
    }
    let channel = |(c, col_c): (usize, &mut [f32])| {
        let x_plane = &x_n[c * g.in_plane()..][..g.in_plane()];
        g.for_each_tap_row(|row| {
            let out = &mut col_c[row.tap * p..(row.tap + 1) * p][row.out];
            if g.stride[1] == 1 {
                out.copy_from_slice(&x_plane[row.input..][..out.len()]);
            } else {
                let x_row = x_plane[row.input..].iter().step_by(g.stride[1]);
                for (o, &v) in out.iter_mut().zip(x_row) {
                    *o = v;
                }
            }
        });
    };
    let per_channel = (taps * p).max(1);
    if parallel {
        col.par_chunks_mut(per_channel)
            .enumerate()
            .for_each(channel);
    } else {
        col.chunks_mut(per_channel).enumerate().for_each(channel);
    }
}
