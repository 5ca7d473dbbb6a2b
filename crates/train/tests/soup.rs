//! Model soups on real checkpoints of two tiny runs (same architecture, different data
//! order): the soup of one checkpoint is that checkpoint, the uniform soup of two is their
//! mean tensor by tensor (weights and batch-norm statistics), the greedy soup keeps only what
//! does not lower the score, and checkpoints of different architectures are refused.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use common::{config, dataset, run};
use visual_search_model::device::parse_device;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_train::soup::{average, greedy, load_ingredients};

/// Every float tensor of a model, flattened, in visiting order.
fn tensors(model: &EmbeddingModel) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(
                param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .iter::<f32>()
                    .collect(),
            );
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

fn distance(a: &EmbeddingModel, b: &EmbeddingModel) -> f64 {
    let (a, b) = (tensors(a), tensors(b));
    a.iter()
        .zip(&b)
        .flat_map(|(x, y)| x.iter().zip(y))
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn soups_average_checkpoints_of_one_architecture() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let arcface = "  type: arcface\n  k: 2\n  s: 16.0";
    let mut first = config(data.path(), arcface, "  max_steps: 4");
    first.dataset.seed = 1;
    let mut second = first.clone();
    second.dataset.seed = 2;
    run(&first, &runs.path().join("a"), false);
    run(&second, &runs.path().join("b"), false);
    let device = parse_device("flex").unwrap();
    let ingredients =
        load_ingredients(&[runs.path().join("a"), runs.path().join("b")], &device).unwrap();
    let (a, b) = (&ingredients[0].model, &ingredients[1].model);
    let (ta, tb) = (tensors(a), tensors(b));
    assert!(distance(a, b) > 1e-3, "the two runs should differ");

    // One checkpoint: itself, bit for bit.
    assert_eq!(tensors(&average(&[a]).unwrap()), ta);

    // Two: the mean of every tensor, batch-norm running statistics included.
    let soup = tensors(&average(&[a, b]).unwrap());
    assert_eq!(soup.len(), ta.len());
    for ((s, x), y) in soup.iter().zip(&ta).zip(&tb) {
        for ((s, x), y) in s.iter().zip(x).zip(y) {
            let mean = (x + y) / 2.0;
            assert!(
                (s - mean).abs() <= 1e-6 * mean.abs().max(1.0),
                "{s} vs {mean}"
            );
        }
    }

    // Greedy under "closeness to a": a alone is best, and adding b only moves away from it.
    let score = |m: &EmbeddingModel| -> Result<f64, visual_search_train::error::TrainError> {
        Ok(-distance(m, a))
    };
    let (soup, best, steps) = greedy(&[b, a], score).unwrap();
    assert_eq!(best, 0.0);
    assert_eq!(tensors(&soup), ta);
    assert_eq!(steps.len(), 2);
    assert!(steps[0].ingredient == 1 && steps[0].kept);
    assert!(steps[1].ingredient == 0 && !steps[1].kept && steps[1].with_it < 0.0);

    // A checkpoint of another input size cannot go into the same soup.
    let mut other = first.clone();
    other.dataset.input_size = 48;
    run(&other, &runs.path().join("c"), false);
    let refused = load_ingredients(&[runs.path().join("a"), runs.path().join("c")], &device);
    let message = refused
        .err()
        .expect("mixed architectures accepted")
        .to_string();
    assert!(message.contains("cannot go into one soup"), "{message}");
}
