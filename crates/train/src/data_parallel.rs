//! Data-parallel training across processes (`train --world-size W --rank R --master HOST:PORT`):
//! every process holds the whole model, trains on its share of each batch, and the gradients
//! are summed over the processes before every optimiser step, so all of them take the same step
//! from the same weights — one process's training, W times the compute.
//!
//! Why not burn's own data-parallel runtime: burn 0.22's `burn::tensor::distributed` runs the
//! devices of *one* process (a sync server thread between them), and its `all_reduce` is
//! implemented only by the CubeCL backends (CUDA, wgpu); on flex it is `unimplemented!()`, and
//! nothing in 0.22 crosses a process boundary. burn's collective library, `burn-collective`
//! (last released as 0.21), does: processes register with a global orchestrator (a WebSocket
//! server, run here by rank 0 at the master address) and all-reduce peer to peer with a ring.
//! Its tensors are burn 0.21 tensors, so the gradients travel as a burn 0.21 flex tensor: one
//! flat f32 vector per step, copied out of and back into our burn 0.22 gradients.
//!
//! What matches one process exactly: the batch (each process loads its contiguous share, with
//! the augmentations the whole batch would get), the loss (each share's gradient is weighted by
//! its image count, the sum divided by the batch's), the clipping (after the sum), the schedule
//! and the checkpoints (written by rank 0). What does not, as in PyTorch's DDP: batch-norm
//! statistics are each share's own, and dropout draws its own masks per share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use burn_backend_wire::TensorData as WireData;
use burn_backend_wire::ops::FloatTensorOps;
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use burn_flex_wire::{Flex, FlexDevice};
use visual_search_data::shard::ShardSpec;

use crate::error::TrainError;

/// Where a process stands in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub world_size: usize,
    pub rank: usize,
    /// `HOST:PORT` of rank 0's orchestrator, the same for every process.
    pub master: String,
    /// The master's port; rank R's data service listens on the next R + 1.
    pub master_port: u16,
    /// The host the other processes reach this one at (its data service listens on the
    /// master's port + 1 + rank).
    pub node_host: String,
    /// Longest wait for the other processes in one exchange before this one gives up (a
    /// crashed peer would otherwise leave the rest waiting for ever).
    pub timeout: Duration,
}

impl GroupConfig {
    /// Checks the numbers and addresses; `node_host` defaults to the master's host when that is
    /// this machine (a loopback address or `localhost`).
    pub fn new(
        world_size: usize,
        rank: usize,
        master: &str,
        node_host: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, TrainError> {
        ShardSpec::new(rank, world_size).map_err(|_| {
            TrainError::Invalid(format!(
                "rank {rank} of world size {world_size}: ranks are 0..{world_size}"
            ))
        })?;
        let (host, port) = master.rsplit_once(':').ok_or_else(|| {
            TrainError::Invalid(format!("--master {master:?}: expected HOST:PORT"))
        })?;
        let port: u16 = port.parse().map_err(|_| {
            TrainError::Invalid(format!("--master {master:?}: {port:?} is not a port"))
        })?;
        if port as usize + world_size >= u16::MAX as usize {
            return Err(TrainError::Invalid(format!(
                "--master port {port}: the ports after it (one per rank) must exist"
            )));
        }
        let local = host == "localhost" || host.starts_with("127.") || host == "[::1]";
        let node_host = match node_host {
            Some(h) => h.to_string(),
            None if local => host.to_string(),
            None => {
                return Err(TrainError::Invalid(format!(
                    "the master {master} is another machine: give --node-addr HOST, an address the other processes reach this one at"
                )));
            }
        };
        Ok(GroupConfig {
            world_size,
            rank,
            master: master.to_string(),
            master_port: port,
            node_host,
            timeout,
        })
    }

    /// This process's share of every batch.
    pub fn share(&self) -> ShardSpec {
        ShardSpec::new(self.rank, self.world_size).expect("checked when the group was made")
    }
}

/// This process's membership of a training group.
pub struct ProcessGroup {
    pub config: GroupConfig,
    /// Milliseconds since `epoch` after which the exchange in progress has failed (0: none).
    deadline_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup({:?})", self.config)
    }
}

impl ProcessGroup {
    /// Joins the group: rank 0 first starts the orchestrator, then every process registers
    /// (this returns once all `world_size` have).
    pub fn join(config: GroupConfig) -> Result<Self, TrainError> {
        // The libraries retry a port they cannot listen on for ever: say so at once instead.
        let data_port = config.master_port + 1 + config.rank as u16;
        let mut ports = vec![data_port];
        if config.rank == 0 {
            ports.push(config.master_port);
        }
        for port in ports {
            std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
                TrainError::Invalid(format!(
                    "rank {}: cannot listen on port {port} ({e}); the group uses the --master port and the {} after it: choose another --master port",
                    config.rank, config.world_size
                ))
            })?;
        }
        if config.rank == 0 {
            let port = config.master_port;
            std::thread::Builder::new()
                .name("collective-orchestrator".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(burn_collective::start_global_orchestrator(port)),
                        Err(e) => eprintln!("error: starting the orchestrator runtime: {e}"),
                    }
                })
                .map_err(|e| TrainError::Invalid(format!("starting the orchestrator: {e}")))?;
        }
        let address = |hostport: String| {
            format!("ws://{hostport}")
                .parse()
                .map_err(|e: String| TrainError::Invalid(format!("address {hostport}: {e}")))
        };
        let collective = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(config.world_size as u32)
            .with_global_address(address(config.master.clone())?)
            .with_node_address(address(format!("{}:{data_port}", config.node_host))?)
            .with_data_service_port(data_port);
        let group = ProcessGroup {
            deadline_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            config,
        };
        group.start_watchdog();
        group.guarded("joining the group", || {
            burn_collective::register::<Flex>(
                PeerId::from(group.config.rank as u32),
                FlexDevice,
                collective.clone(),
            )
            .map_err(|e| format!("{e:?}"))
        })?;
        Ok(group)
    }

    /// Exits the process when an exchange outlives its deadline: the peers of a crashed
    /// process would otherwise wait in the all-reduce for ever.
    fn start_watchdog(&self) {
        let deadline = self.deadline_ms.clone();
        let epoch = self.epoch;
        let rank = self.config.rank;
        let timeout = self.config.timeout;
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let d = deadline.load(Ordering::Relaxed);
                if d != 0 && epoch.elapsed().as_millis() as u64 > d {
                    eprintln!(
                        "error: rank {rank}: the other processes did not answer within {timeout:?} (did one of them stop?); exiting"
                    );
                    std::process::exit(3);
                }
            }
        });
    }

    /// Runs one exchange under the deadline.
    fn guarded<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, TrainError> {
        let deadline = self.epoch.elapsed() + self.config.timeout;
        self.deadline_ms
            .store(deadline.as_millis() as u64, Ordering::Relaxed);
        let out = f();
        self.deadline_ms.store(0, Ordering::Relaxed);
        out.map_err(|e| {
            TrainError::Invalid(format!(
                "rank {} of {}: {what}: {e}",
                self.config.rank, self.config.world_size
            ))
        })
    }

    /// The element-wise sum of `values` over every process of the group.
    pub fn all_reduce_sum(&self, values: Vec<f32>) -> Result<Vec<f32>, TrainError> {
        let n = values.len();
        let tensor = Flex::float_from_data(WireData::new(values, [n]), &FlexDevice);
        self.guarded("summing the gradients", || {
            let summed = burn_collective::all_reduce::<Flex>(
                PeerId::from(self.config.rank as u32),
                tensor,
                ReduceOperation::Sum,
            )
            .map_err(|e| format!("{e:?}"))?;
            let data = futures::executor::block_on(Flex::float_into_data(summed))
                .map_err(|e| format!("{e:?}"))?;
            data.to_vec::<f32>().map_err(|e| format!("{e:?}"))
        })
    }

    pub fn is_leader(&self) -> bool {
        self.config.rank == 0
    }

    /// Leaves the group at the end of a run: an exchange that every process reaches once it is
    /// done, after which the other ranks end and the leader, whose process hosts the
    /// orchestrator, waits a moment so it ends last. (Unregistering through the orchestrator
    /// instead raced with the leader's exit and could leave a rank waiting.)
    pub fn leave(&self) -> Result<(), TrainError> {
        self.all_reduce_sum(vec![0.0; self.config.world_size])?;
        if self.is_leader() {
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }
}

struct Flatten<'a> {
    grads: &'a GradientsParams,
    out: &'a mut Vec<f32>,
}

impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.out.extend(g.into_data().iter::<f32>());
        }
    }
}

struct Unflatten<'a, 'v> {
    grads: &'a mut GradientsParams,
    values: &'v [f32],
    factor: f32,
}

impl ModuleVisitor for Unflatten<'_, '_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let shape = g.shape();
            let n = shape.num_elements();
            let (mine, rest) = self.values.split_at(n.min(self.values.len()));
            self.values = rest;
            let scaled: Vec<f32> = mine.iter().map(|v| v * self.factor).collect();
            let t = Tensor::<D>::from_data(TensorData::new(scaled, shape), &g.device());
            self.grads.register(param.id, t);
        }
    }
}

/// Appends one module's gradients, in parameter order, to `out`.
pub fn flatten_grads<M: Module>(module: &M, grads: &GradientsParams, out: &mut Vec<f32>) {
    module.visit(&mut Flatten { grads, out });
}

/// Replaces one module's gradients by the next values of `values` (times `factor`), in the
/// order [`flatten_grads`] wrote them; returns the values left.
pub fn unflatten_grads<'v, M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    values: &'v [f32],
    factor: f32,
) -> &'v [f32] {
    let mut v = Unflatten {
        grads,
        values,
        factor,
    };
    module.visit(&mut v);
    v.values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_settings_are_checked() {
        let t = Duration::from_secs(5);
        let c = GroupConfig::new(2, 1, "127.0.0.1:29500", None, t).unwrap();
        assert_eq!(c.node_host, "127.0.0.1");
        assert_eq!(c.master_port, 29500);
        assert!(GroupConfig::new(2, 2, "127.0.0.1:29500", None, t).is_err());
        assert!(GroupConfig::new(2, 0, "127.0.0.1", None, t).is_err());
        let e = GroupConfig::new(2, 0, "10.0.0.5:29500", None, t).unwrap_err();
        assert!(e.to_string().contains("--node-addr"), "{e}");
        let c = GroupConfig::new(2, 1, "10.0.0.5:29500", Some("10.0.0.6"), t).unwrap();
        assert_eq!(c.node_host, "10.0.0.6");
    }
}
