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

/// Whether `device` is burn-flex (where our own kernels run: `train_ops`).
pub fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        use burn::backend::DispatchDevice;
        matches!(
            device.as_dispatch().clone().inner(),
            DispatchDevice::Flex(_)
        )
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// The device to train `architecture` on: the named one, or for `auto` a compiled GPU backend,
/// else the faster CPU backend for this family as measured by `bench train` (BENCHMARKS.md
/// "Training throughput"): `tch` for ViT (libtorch's GEMMs; 1.4x flex before our attention
/// kernel, about flex's speed since: 3.33 against 3.26 img/s in one run), `flex` for the CNNs
/// (our convolution kernels; 1.0x–3.0x tch).
///
/// With `bf16` (mixed precision, which only flex trains: bf16 products on AMX) `auto` on a CPU
/// is flex for every family.
pub fn training_device(
    name: &str,
    architecture: &crate::registry::Architecture,
    bf16: bool,
) -> Result<Device, UnknownDevice> {
    if name != "auto" || cfg!(feature = "cuda") || cfg!(feature = "wgpu") {
        return parse_device(name);
    }
    let transformer = matches!(architecture, crate::registry::Architecture::Vit(_));
    if transformer && !bf16 && cfg!(feature = "tch") || !cfg!(feature = "flex") {
        parse_device("auto")
    } else {
        parse_device("flex")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    /// `auto` trains on a compiled GPU backend; without one, on flex unless tch is compiled and
    /// the model is a ViT.
    #[test]
    fn auto_training_device_follows_the_measured_ranking() {
        let cnn = lookup("efficientnet_lite0").unwrap().architecture;
        let vit = lookup("vit_b32_clip").unwrap().architecture;
        let gpu = cfg!(feature = "cuda") || cfg!(feature = "wgpu");
        let flex_built = cfg!(feature = "flex");
        let want = |name: &str| parse_device(name).unwrap();
        let (want_cnn, want_vit) = if gpu || !flex_built {
            (want("auto"), want("auto"))
        } else if cfg!(feature = "tch") {
            (want("flex"), want("tch"))
        } else {
            (want("flex"), want("flex"))
        };
        assert_eq!(training_device("auto", &cnn, false).unwrap(), want_cnn);
        assert_eq!(training_device("auto", &vit, false).unwrap(), want_vit);
        if !gpu && flex_built {
            assert_eq!(training_device("auto", &vit, true).unwrap(), want("flex"));
        }
        if flex_built {
            assert_eq!(training_device("flex", &vit, false).unwrap(), want("flex"));
        }
    }
}
