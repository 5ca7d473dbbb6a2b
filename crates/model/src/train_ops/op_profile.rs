//! Where a training step's time goes on flex, by kind of operation: the wall time, the process
//! CPU time and the calls of each of our tracked operations (depthwise, 1×1 and other
//! convolutions — with the frozen batch norm folded into them and the activation after it —
//! GELU, LayerNorm, linear, attention, ConvNeXt's layer scale, AdamW and the clipping norms), in
//! the forward pass, the backward pass and the optimiser step. `bench train` prints
//! it beside PyTorch's profiler; CPU time over wall time says which operations keep both cores
//! busy and which run on one, and what the phases spend outside these operations is burn's own
//! (element-wise operations, layout copies, reductions, the loss).
//!
//! Off unless [`set_recording`] turns it on: an operation then costs one relaxed atomic load.
//! When on, two clock reads per operation (`CLOCK_PROCESS_CPUTIME_ID`, a system call of about
//! a microsecond, and a monotonic clock), a few hundred per step of seconds. An operation
//! called inside another one that is being timed is counted in the outer one only.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A kind of operation in the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A convolution with one group per channel (EfficientNet, ConvNeXt). Each convolution kind
    /// includes its bias and activation, and a frozen batch norm folded into it.
    DepthwiseConv,
    /// A 1×1 convolution.
    PointwiseConv,
    /// Any other convolution: stems, patch embeddings, ResNet's 3×3 layers.
    Conv,
    Gelu,
    LayerNorm,
    /// A linear layer's product and bias.
    Linear,
    /// Multi-head attention from the packed QKV projection (ViT).
    Attention,
    /// ConvNeXt's layer scale and residual sum.
    LayerScale,
    /// The AdamW update of each parameter.
    AdamW,
    /// The squared gradient norms for clipping.
    GradNorm,
}

impl OpKind {
    pub const ALL: [OpKind; 10] = [
        OpKind::DepthwiseConv,
        OpKind::PointwiseConv,
        OpKind::Conv,
        OpKind::Gelu,
        OpKind::LayerNorm,
        OpKind::Linear,
        OpKind::Attention,
        OpKind::LayerScale,
        OpKind::AdamW,
        OpKind::GradNorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::DepthwiseConv => "depthwise conv",
            OpKind::PointwiseConv => "1×1 conv",
            OpKind::Conv => "k×k conv (stems, 3×3, patches)",
            OpKind::Gelu => "GELU",
            OpKind::LayerNorm => "LayerNorm",
            OpKind::Linear => "linear (matmul + bias)",
            OpKind::Attention => "attention",
            OpKind::LayerScale => "layer scale + residual",
            OpKind::AdamW => "AdamW update",
            OpKind::GradNorm => "gradient norms (clipping)",
        }
    }

    /// The kind of a convolution of `in_channels` inputs with a `[out, in / groups, kh, kw]`
    /// weight.
    pub fn of_conv(in_channels: usize, weight: [usize; 4], groups: usize) -> Self {
        let [out_channels, per_group, kernel_h, kernel_w] = weight;
        if groups > 1 && groups == in_channels && per_group == 1 && out_channels == groups {
            OpKind::DepthwiseConv
        } else if kernel_h == 1 && kernel_w == 1 {
            OpKind::PointwiseConv
        } else {
            OpKind::Conv
        }
    }
}

/// The part of a step an operation ran in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Forward, Phase::Backward, Phase::Optimizer];
}

/// Calls and seconds of one kind of operation in one phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTimes {
    pub calls: u64,
    pub wall_s: f64,
    /// Process CPU time (all threads) while the operations ran.
    pub cpu_s: f64,
}

impl OpTimes {
    const ZERO: OpTimes = OpTimes {
        calls: 0,
        wall_s: 0.0,
        cpu_s: 0.0,
    };

    fn add(&mut self, other: OpTimes) {
        self.calls += other.calls;
        self.wall_s += other.wall_s;
        self.cpu_s += other.cpu_s;
    }
}

/// What was recorded, by kind and phase.
#[derive(Debug, Clone, PartialEq)]
pub struct OpProfile {
    times: [[OpTimes; 3]; OpKind::ALL.len()],
}

impl Default for OpProfile {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl OpProfile {
    const EMPTY: OpProfile = OpProfile {
        times: [[OpTimes::ZERO; 3]; OpKind::ALL.len()],
    };

    pub fn get(&self, kind: OpKind, phase: Phase) -> OpTimes {
        self.times[kind as usize][phase as usize]
    }

    /// Every kind's times in `phase`, summed.
    pub fn phase_total(&self, phase: Phase) -> OpTimes {
        let mut total = OpTimes::ZERO;
        for kind in OpKind::ALL {
            total.add(self.get(kind, phase));
        }
        total
    }

    /// Whether nothing was recorded (another backend, or recording off).
    pub fn is_empty(&self) -> bool {
        Phase::ALL.iter().all(|&p| self.phase_total(p).calls == 0)
    }
}

static RECORDING: AtomicBool = AtomicBool::new(false);
static PROFILE: Mutex<OpProfile> = Mutex::new(OpProfile::EMPTY);

thread_local! {
    /// Whether this thread is inside a timed operation.
    static TIMING: Cell<bool> = const { Cell::new(false) };
}

/// Starts (or stops) recording our operations, process-wide.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// What was recorded since the last call, which starts the next profile from zero.
pub fn take() -> OpProfile {
    let mut profile = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *profile)
}

/// Runs `f`, the operation of `kind` in `phase`, and records its times while recording is on
/// (unless another timed operation on this thread encloses it). Only flex's operations are
/// timed, so a build without flex does not call it.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn timed<T>(kind: OpKind, phase: Phase, f: impl FnOnce() -> T) -> T {
    if !RECORDING.load(Ordering::Relaxed) || TIMING.get() {
        return f();
    }
    /// Clears the thread's flag however `f` ends.
    struct Timing;
    impl Drop for Timing {
        fn drop(&mut self) {
            TIMING.set(false);
        }
    }
    TIMING.set(true);
    let _timing = Timing;
    let (wall, cpu) = (Instant::now(), process_cpu_seconds());
    let out = f();
    let times = OpTimes {
        calls: 1,
        wall_s: wall.elapsed().as_secs_f64(),
        cpu_s: process_cpu_seconds() - cpu,
    };
    let mut profile = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    profile.times[kind as usize][phase as usize].add(times);
    out
}

/// CPU seconds this process has used, on all its threads (0 where the clock is missing).
pub fn process_cpu_seconds() -> f64 {
    #[cfg(target_os = "linux")]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid, writable timespec; the call only writes it.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convolutions_are_told_apart_by_their_weights() {
        assert_eq!(
            OpKind::of_conv(96, [96, 1, 7, 7], 96),
            OpKind::DepthwiseConv
        );
        assert_eq!(
            OpKind::of_conv(32, [64, 32, 1, 1], 1),
            OpKind::PointwiseConv
        );
        assert_eq!(OpKind::of_conv(3, [32, 3, 3, 3], 1), OpKind::Conv);
        // Grouped but not one group per channel.
        assert_eq!(OpKind::of_conv(64, [64, 2, 3, 3], 32), OpKind::Conv);
        // One input channel in one group, a 1×1 depthwise one, a 1×7 one.
        assert_eq!(OpKind::of_conv(1, [8, 1, 3, 3], 1), OpKind::Conv);
        assert_eq!(OpKind::of_conv(8, [8, 1, 1, 1], 8), OpKind::DepthwiseConv);
        assert_eq!(OpKind::of_conv(16, [16, 16, 1, 7], 1), OpKind::Conv);
    }

    // One test for the process-wide state, so that no other test of this module races it.
    #[test]
    fn records_only_while_on_and_only_the_outer_operation() {
        set_recording(false);
        take();
        timed(OpKind::Gelu, Phase::Forward, || ());
        assert!(take().is_empty(), "recorded while off");

        set_recording(true);
        let out = timed(OpKind::Linear, Phase::Backward, || {
            let busy: u64 = (0..200_000u64).map(std::hint::black_box).sum();
            timed(OpKind::Gelu, Phase::Backward, || busy + 1)
        });
        timed(OpKind::Linear, Phase::Backward, || ());
        timed(OpKind::AdamW, Phase::Optimizer, || ());
        let result = std::panic::catch_unwind(|| {
            timed(OpKind::LayerNorm, Phase::Forward, || panic!("inside"))
        });
        assert!(result.is_err());
        // The panic left the thread outside any operation.
        timed(OpKind::Gelu, Phase::Forward, || ());
        set_recording(false);

        assert_eq!(out, 199_999 * 200_000 / 2 + 1);
        let profile = take();
        let linear = profile.get(OpKind::Linear, Phase::Backward);
        assert_eq!(linear.calls, 2);
        assert!(linear.wall_s > 0.0 && linear.cpu_s >= 0.0);
        assert_eq!(profile.get(OpKind::Gelu, Phase::Backward).calls, 0);
        assert_eq!(profile.get(OpKind::Gelu, Phase::Forward).calls, 1);
        assert_eq!(profile.get(OpKind::LayerNorm, Phase::Forward).calls, 0);
        assert_eq!(profile.get(OpKind::AdamW, Phase::Optimizer).calls, 1);
        assert_eq!(profile.phase_total(Phase::Backward).calls, 2);
        assert!(take().is_empty(), "take starts from zero");
    }
}
