//! Choosing a compute device by name among the backends compiled in.
//!
//! Names: `flex` (pure-Rust CPU), `tch` / `tch-cuda:N` (libtorch CPU / GPU N), `cuda:N`, `wgpu`,
//! or `auto` (a GPU backend if one is compiled in and present, else the CPU one).

use burn::tensor::Device;

/// Backends compiled into this build, in preference order for `auto`.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "tch") {
        names.push("tch");
    }
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    names
}

/// Error for a device name this build cannot provide.
#[derive(Debug, thiserror::Error)]
#[error(
    "device `{name}` is not available in this build (compiled backends: {available}); rebuild with `--features {feature}`"
)]
pub struct UnknownDevice {
    pub name: String,
    pub available: String,
    pub feature: String,
}

/// Parses a device name (see module docs).
pub fn parse_device(name: &str) -> Result<Device, UnknownDevice> {
    #[allow(unused_variables)] // only GPU backends use the index
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (k, i.parse::<usize>().ok()),
        None => (name, None),
    };
    let unknown = |feature: &str| UnknownDevice {
        name: name.to_string(),
        available: compiled_backends().join(", "),
        feature: feature.to_string(),
    };
    match kind {
        "auto" => {
            let first = compiled_backends()
                .first()
                .copied()
                .ok_or_else(|| unknown("flex"))?;
            parse_device(first)
        }
        #[cfg(feature = "flex")]
        "flex" | "cpu" => Ok(Device::flex()),
        // burn 0.22 marks its libtorch backend deprecated; it is still the way to PyTorch's kernels.
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        "tch" => Ok(Device::libtorch()),
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        "tch-cuda" => Ok(Device::libtorch_cuda(index.unwrap_or(0))),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(index.unwrap_or(0))),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(not(feature = "flex"))]
        "flex" | "cpu" => Err(unknown("flex")),
        #[cfg(not(feature = "tch"))]
        "tch" | "tch-cuda" => Err(unknown("tch")),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(unknown("cuda")),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => Err(unknown("wgpu")),
        _ => Err(UnknownDevice {
            name: name.to_string(),
            available: compiled_backends().join(", "),
            feature: "<one of flex, tch, cuda, wgpu>".to_string(),
        }),
    }
}
