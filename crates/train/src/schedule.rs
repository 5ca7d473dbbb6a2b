//! Linear warmup then cosine decay, stepped once per optimiser step — the schedule of
//! `transformers.get_cosine_schedule_with_warmup`, which the challenge solution used:
//! `lr(t) = base · t / warmup` for `t < warmup`, then
//! `base · 0.5 · (1 + cos(π · (t - warmup) / (total - warmup)))`.

/// The learning rate for every optimiser step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    pub base: f64,
    pub warmup: usize,
    pub total: usize,
}

impl WarmupCosine {
    /// The rate used by optimiser step `t` (0-based).
    pub fn lr(&self, t: usize) -> f64 {
        if t < self.warmup {
            return self.base * t as f64 / self.warmup.max(1) as f64;
        }
        let progress =
            (t - self.warmup) as f64 / (self.total.saturating_sub(self.warmup)).max(1) as f64;
        self.base * (0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = WarmupCosine {
            base: 1.0,
            warmup: 10,
            total: 110,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12);
        assert!(s.lr(500).abs() < 1e-12);
    }
}
