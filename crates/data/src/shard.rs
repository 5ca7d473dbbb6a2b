//! Which share of a list one of N worker processes takes (`--shard I/N`): contiguous, in order,
//! and the same on every run, so workers on different machines split a list without talking
//! to each other.

use std::ops::Range;

/// A worker number that does not fit its count, or text that is not `I/N`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidShard(String);

/// Worker `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl ShardSpec {
    pub fn new(index: usize, count: usize) -> Result<Self, InvalidShard> {
        if count == 0 || index >= count {
            return Err(InvalidShard(format!(
                "shard {index}/{count}: the index must be below the count (0-based: 0/{count} … {}/{count})",
                count.max(1) - 1
            )));
        }
        Ok(ShardSpec { index, count })
    }

    /// This worker's share of `n` work units: a contiguous range, the shares of `0..count`
    /// tiling `0..n` in order.
    pub fn share(&self, n: usize) -> Range<usize> {
        self.index * n / self.count..(self.index + 1) * n / self.count
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for ShardSpec {
    type Err = InvalidShard;

    /// `I/N`, e.g. `0/4` … `3/4`.
    fn from_str(s: &str) -> Result<Self, InvalidShard> {
        let bad = || InvalidShard(format!("shard {s:?}: expected I/N, e.g. 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        ShardSpec::new(i, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_tile_the_work_in_order() {
        for n in 0..20 {
            for count in 1..6 {
                let mut next = 0;
                for index in 0..count {
                    let s = ShardSpec::new(index, count).unwrap().share(n);
                    assert_eq!(s.start, next);
                    next = s.end;
                }
                assert_eq!(next, n);
            }
        }
        assert_eq!(
            "2/3".parse::<ShardSpec>().unwrap(),
            ShardSpec::new(2, 3).unwrap()
        );
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad}");
        }
    }
}
