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
        let seconds = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
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
            max_bytes: self.max_mib << 20,
        })
    }
}
