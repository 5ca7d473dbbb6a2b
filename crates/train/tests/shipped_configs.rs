//! Every config under configs/ parses and has the recipe's values.

use std::path::Path;

use visual_search_train::config::TrainConfig;

#[test]
fn shipped_configs_parse_with_the_recipe_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let load = |name: &str| TrainConfig::load(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
    let first = load("arcface_1st.yml");
    assert_eq!(
        (
            first.dataset.input_size,
            first.dataset.batch_size,
            first.optim.epochs
        ),
        (224, 48, 3)
    );
    assert_eq!(
        (
            first.optim.lr_head,
            first.optim.warmup_steps,
            first.optim.grad_accumulation
        ),
        (3e-4, 4500, 1)
    );
    assert_eq!(first.model.name, "convnext_xxlarge_clip");
    let second = load("arcface_2nd.yml");
    assert_eq!(
        (
            second.dataset.input_size,
            second.dataset.batch_size,
            second.optim.epochs
        ),
        (256, 32, 5)
    );
    assert!(second.model.pretrain_model.is_some());
    use visual_search_train::config::{HeadConfig, SamplerKind};
    // (file, lr, warmup, grad accumulation, previous phase) of SPEC's phase table.
    for (file, lr, warmup, accum, previous) in [
        ("xbm_1st.yml", 1e-4, 1000, 1, "arcface_2nd"),
        ("xbm_2nd.yml", 1e-5, 1500, 4, "xbm_1st"),
        ("xbm_3rd.yml", 6e-6, 1500, 4, "xbm_2nd"),
    ] {
        let c = load(file);
        assert!(matches!(c.head, HeadConfig::Xbm(_)), "{file}");
        assert_eq!(c.sampler(), SamplerKind::ClassBalanced, "{file}");
        assert_eq!(
            (c.dataset.input_size, c.dataset.batch_size, c.optim.epochs),
            (256, 32, 3),
            "{file}"
        );
        assert_eq!(
            (
                c.optim.lr_head,
                c.optim.warmup_steps,
                c.optim.grad_accumulation
            ),
            (lr, warmup, accum),
            "{file}"
        );
        assert!(c.dataset.product10k.add_val_to_train, "{file}");
        assert_eq!(c.dataset.mined_pairs[0].label_offset, 10_000, "{file}");
        assert!(
            c.model.pretrain_model.as_ref().unwrap().ends_with(previous),
            "{file}"
        );
    }
    let quick = load("quickstart.yml");
    assert_eq!(quick.model.name, "efficientnet_lite0");
    assert!(
        !quick.model.weights.unwrap().starts_with("~"),
        "~ is expanded"
    );
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yml") {
            TrainConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
