//! The HTTP flags shared by `mine features` and `mine download`.

use std::time::Duration;

use visual_search_mining::fetch::FetchConfig;

#[derive(clap::Args, Debug, Clone)]
pub struct FetchArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds allowed for one request.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Retries of a request that failed in a way that may pass (network, 408, 429, 5xx).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Seconds before the first retry; doubled for each further one.
    #[arg(long, default_value_t = 0.5)]
    pub backoff: f64,
    /// Largest image accepted, in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_mib: u64,
}

impl FetchArgs {
    pub fn config(&self) -> anyhow::Result<FetchConfig> {
        let seconds = |name: &str, v: f64| match Duration::try_from_secs_f64(v) {
            Ok(d) => Ok(d),
            Err(_) => {
                anyhow::bail!("--{name} must be a non-negative number of seconds, got {v}")
            }
        };
        if self.concurrency == 0 {
            anyhow::bail!("--concurrency must be at least 1");
        }
        Ok(FetchConfig {
            concurrency: self.concurrency,
            timeout: seconds("timeout", self.timeout)?,
            retries: self.retries,
            backoff: seconds("backoff", self.backoff)?,
            max_bytes: self.max_mib.saturating_mul(1 << 20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::FetchArgs;

    #[test]
    fn seconds_that_are_no_duration_are_refused_by_name() {
        let args = FetchArgs {
            concurrency: 4,
            timeout: 30.0,
            retries: 3,
            backoff: 0.5,
            max_mib: u64::MAX,
        };
        assert_eq!(args.config().unwrap().max_bytes, u64::MAX);
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
            let err = FetchArgs {
                timeout: bad,
                ..args.clone()
            }
            .config()
            .unwrap_err();
            assert!(err.to_string().contains("--timeout"), "{bad}: {err}");
            let err = FetchArgs {
                backoff: bad,
                ..args.clone()
            }
            .config()
            .unwrap_err();
            assert!(err.to_string().contains("--backoff"), "{bad}: {err}");
        }
    }
}
