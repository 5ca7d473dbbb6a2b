//! Flag groups shared by several subcommands (ripgrep's `flags/` idea): which model on which
//! device, and where a PostgreSQL index lives. Defaults come from the library `Default`s, so
//! `--help` and the library agree.

pub mod model;
pub mod postgres;
pub mod shard;

/// A count that must be at least 1 (a batch size, say): clap refuses 0 with the flag's name,
/// where the loaders below would otherwise stop on an assertion.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number ≥ 0 (an exponent, a distance): NaN and infinities are refused with the
/// flag's name instead of turning rankings into noise or an index's settings into `null`.
pub fn non_negative(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(v) => Err(format!("must be a finite number ≥ 0, got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A weight in [0, 1].
pub fn unit_interval(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("must be in [0, 1], got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A cosine threshold: a number in [-1, 1] (NaN would make every comparison false and a
/// gate's report read "(< NaN)").
pub fn cosine(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (-1.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("must be a cosine in [-1, 1], got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_outside_their_range_are_refused() {
        assert_eq!(super::at_least_one("3"), Ok(3));
        assert!(super::at_least_one("0").is_err());
        assert_eq!(super::non_negative("0.8"), Ok(0.8));
        for bad in ["nan", "inf", "-1", "x"] {
            assert!(super::non_negative(bad).is_err(), "{bad}");
        }
        assert_eq!(super::unit_interval("0.3"), Ok(0.3));
        for bad in ["nan", "1.5", "-0.1"] {
            assert!(super::unit_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(super::cosine("0.99"), Ok(0.99));
        assert_eq!(super::cosine("-1"), Ok(-1.0));
        for bad in ["nan", "NaN", "1.01", "-inf", "x"] {
            assert!(super::cosine(bad).is_err(), "{bad}");
        }
    }
}
