//! Fashion-MNIST (IDX files, as Debian's `dataset-fashion-mnist` ships them) → challenge layout.
//!
//! The import gives every user a real dataset in the exact formats of the challenge:
//! - `train.csv` / `test_kaggletest.csv` (Product10K-style, `name,class,group`, prefix empty):
//!   training images 0..50,000 and 50,000..60,000;
//! - `gallery.csv` / `queries.csv` (dev-set style): the 10,000 test images, every 10th image of
//!   each class a query (1,000), the rest gallery (9,000).
//!
//! Fashion-MNIST has only 10 classes, so unlike the challenge the dev set shares its classes with
//! training (closed set). Images are written as 28x28 greyscale PNGs under `train/<class>/` and
//! `test/<class>/`; existing files are kept, so an interrupted import resumes. The CSV lists of
//! an earlier import are replaced, but never a list the import did not write (a user's own
//! dataset root named as `--out`): that is refused before anything is written.

use std::io::Read;

use image::ImageEncoder;
use std::path::{Path, PathBuf};

use crate::atomic_write::write_atomically;
use crate::error::{DataError, Result};

/// Class names in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where Debian's package puts the files.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Training images before this index go to `train.csv`, the rest to `test_kaggletest.csv`.
pub const TRAIN_VAL_SPLIT: usize = 50_000;
/// Every `QUERY_EVERY`-th test image of a class is a query.
pub const QUERY_EVERY: usize = 10;

/// A stack of greyscale images from an IDX file.
#[derive(Debug, Clone)]
pub struct IdxImages {
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

impl IdxImages {
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.rows * self.cols)
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[i * n..(i + 1) * n]
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::io(path, e))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn invalid(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads an IDX3 u8 image file (optionally gzip'ed).
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 16 || be_u32(&bytes, 0) != 0x0000_0803 {
        return Err(invalid(
            path,
            "not an IDX3 u8 image file (magic 0x00000803)",
        ));
    }
    let (n, rows, cols) = (
        be_u32(&bytes, 4) as usize,
        be_u32(&bytes, 8) as usize,
        be_u32(&bytes, 12) as usize,
    );
    if rows == 0 || cols == 0 || bytes.len() != 16 + n * rows * cols {
        return Err(invalid(
            path,
            format!(
                "header says {n} images of {rows}x{cols} but the file holds {} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(IdxImages {
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
    })
}

/// Reads an IDX1 u8 label file (optionally gzip'ed).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 8 || be_u32(&bytes, 0) != 0x0000_0801 {
        return Err(invalid(
            path,
            "not an IDX1 u8 label file (magic 0x00000801)",
        ));
    }
    let n = be_u32(&bytes, 4) as usize;
    if bytes.len() != 8 + n {
        return Err(invalid(
            path,
            format!(
                "header says {n} labels but the file holds {} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(bytes[8..].to_vec())
}

/// `<dir>/<stem>` or `<dir>/<stem>.gz`, whichever exists.
fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    [dir.join(stem), dir.join(format!("{stem}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| invalid(dir, format!("no {stem} or {stem}.gz here (install Debian's dataset-fashion-mnist or pass --from)")))
}

/// Options of [`import_fashion_mnist`].
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Folder with the four IDX files.
    pub from: PathBuf,
    /// Output dataset root.
    pub out: PathBuf,
    /// Keep at most this many images per class in each of the four lists.
    pub max_per_class: Option<usize>,
}

/// What the import wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportSummary {
    pub train: usize,
    pub val: usize,
    pub gallery: usize,
    pub queries: usize,
    pub images_written: usize,
}

struct Split {
    name: String,
    label: u8,
    index: usize,
}

/// Imports Fashion-MNIST into `options.out` in the challenge's formats.
pub fn import_fashion_mnist(options: &ImportOptions) -> Result<ImportSummary> {
    let train_images = read_idx_images(&find_idx(&options.from, "train-images-idx3-ubyte")?)?;
    let train_labels = read_idx_labels(&find_idx(&options.from, "train-labels-idx1-ubyte")?)?;
    let test_images = read_idx_images(&find_idx(&options.from, "t10k-images-idx3-ubyte")?)?;
    let test_labels = read_idx_labels(&find_idx(&options.from, "t10k-labels-idx1-ubyte")?)?;
    for (images, labels, what) in [
        (&train_images, &train_labels, "train"),
        (&test_images, &test_labels, "t10k"),
    ] {
        if images.len() != labels.len() {
            return Err(invalid(
                &options.from,
                format!(
                    "{what}: {} images but {} labels",
                    images.len(),
                    labels.len()
                ),
            ));
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= CLASS_NAMES.len()) {
            return Err(invalid(
                &options.from,
                format!("{what}: label {bad} is not a Fashion-MNIST class"),
            ));
        }
    }
    let cap = options.max_per_class.unwrap_or(usize::MAX);
    let mut lists: [Vec<Split>; 4] = Default::default();
    let mut counts = [[0usize; 10]; 4];
    let mut push = |list: usize, folder: &str, label: u8, index: usize| {
        if counts[list][label as usize] < cap {
            counts[list][label as usize] += 1;
            lists[list].push(Split {
                name: format!("{folder}/{label}/{index:05}.png"),
                label,
                index,
            });
        }
    };
    for (i, &label) in train_labels.iter().enumerate() {
        push(if i < TRAIN_VAL_SPLIT { 0 } else { 1 }, "train", label, i);
    }
    let mut seen_per_class = [0usize; 10];
    for (i, &label) in test_labels.iter().enumerate() {
        let k = seen_per_class[label as usize];
        seen_per_class[label as usize] += 1;
        push(if k % QUERY_EVERY == 0 { 3 } else { 2 }, "test", label, i);
    }

    let product10k = |rows: &[Split]| {
        let mut s = String::from("name,class,group\n");
        for r in rows {
            s += &format!("{},{},{}\n", r.name, r.label, r.label);
        }
        s
    };
    let gallery = |rows: &[Split]| {
        let mut s = String::from("img_path,product_id\n");
        for r in rows {
            s += &format!("{},{}\n", r.name, r.label);
        }
        s
    };
    let queries = |rows: &[Split]| {
        let mut s = String::from("img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h\n");
        for r in rows {
            s += &format!("{},{},,,,\n", r.name, r.label);
        }
        s
    };
    let mut classes = String::from("class,name\n");
    for (i, name) in CLASS_NAMES.iter().enumerate() {
        classes += &format!("{i},{name}\n");
    }
    let lists_out = [
        ("train.csv", product10k(&lists[0])),
        ("test_kaggletest.csv", product10k(&lists[1])),
        ("gallery.csv", gallery(&lists[2])),
        ("queries.csv", queries(&lists[3])),
        ("classes.csv", classes),
    ];
    let out = &options.out;
    check_not_foreign(out, &lists_out)?;

    let mut written = 0;
    for (list, source) in [
        (0, &train_images),
        (1, &train_images),
        (2, &test_images),
        (3, &test_images),
    ] {
        written += write_pngs(out, &lists[list], source)?;
    }
    // The marker first: a run killed between the lists leaves a folder a re-run may finish.
    write_atomically(&out.join(IMPORT_MARKER), IMPORT_MARKER_TEXT.as_bytes())?;
    for (name, text) in &lists_out {
        write_atomically(&out.join(name), text.as_bytes())?;
    }
    Ok(ImportSummary {
        train: lists[0].len(),
        val: lists[1].len(),
        gallery: lists[2].len(),
        queries: lists[3].len(),
        images_written: written,
    })
}

/// The file an import leaves in its folder, so that a later import may replace its lists.
const IMPORT_MARKER: &str = ".fashion-mnist-import";
const IMPORT_MARKER_TEXT: &str =
    "written by `visual-search data import fashion-mnist`; a re-import replaces the CSV lists\n";

/// Refuses, before anything is written, an `out` whose lists were not written by an import:
/// one of the lists exists with other contents and `out` has no [`IMPORT_MARKER`] (a user's
/// own dataset root, say). An import from before the marker passes when its lists are the
/// ones this import writes (a re-run with the same options).
fn check_not_foreign(out: &Path, lists: &[(&str, String)]) -> Result<()> {
    if out.join(IMPORT_MARKER).is_file() {
        return Ok(());
    }
    for (name, text) in lists {
        let path = out.join(name);
        match std::fs::read(&path) {
            Ok(existing) if existing != text.as_bytes() => {
                return Err(invalid(
                    &path,
                    "exists and was not written by a Fashion-MNIST import; refusing to replace \
                     it — choose another --out",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataError::io(&path, e)),
        }
    }
    Ok(())
}

/// Writes the PNGs of `rows` that do not exist yet, on all cores; returns how many were written.
fn write_pngs(out: &Path, rows: &[Split], source: &IdxImages) -> Result<usize> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> Result<usize> {
                    let mut written = 0;
                    for r in part {
                        let path = out.join(&r.name);
                        if path.is_file() {
                            continue;
                        }
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent)
                                .map_err(|e| DataError::io(parent, e))?;
                        }
                        let mut png = Vec::new();
                        image::codecs::png::PngEncoder::new(&mut png)
                            .write_image(
                                source.image(r.index),
                                source.cols as u32,
                                source.rows as u32,
                                image::ExtendedColorType::L8,
                            )
                            .map_err(|e| invalid(&path, e.to_string()))?;
                        write_atomically(&path, &png)?;
                        written += 1;
                    }
                    Ok(written)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("PNG writer thread panicked"))
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_images(n: usize) -> Vec<u8> {
        let mut v = vec![0, 0, 8, 3];
        for d in [n as u32, 2, 3] {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend((0..n * 6).map(|i| i as u8));
        v
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, 1];
        v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        v.extend_from_slice(labels);
        v
    }

    #[test]
    fn reads_idx_and_rejects_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, idx_images(4)).unwrap();
        let images = read_idx_images(&p).unwrap();
        assert_eq!((images.len(), images.rows, images.cols), (4, 2, 3));
        assert_eq!(images.image(1), &[6, 7, 8, 9, 10, 11]);
        let mut cut = idx_images(4);
        cut.pop();
        std::fs::write(&p, cut).unwrap();
        assert!(
            read_idx_images(&p)
                .unwrap_err()
                .to_string()
                .contains("header says 4 images")
        );
        std::fs::write(&p, idx_labels(&[1, 2])).unwrap();
        assert_eq!(read_idx_labels(&p).unwrap(), vec![1, 2]);
    }

    /// Fashion-MNIST-shaped IDX files in `dir`: 6 training images (classes 0, 1), 12 test
    /// images (class 2).
    fn idx_folder(dir: &Path) -> PathBuf {
        let from = dir.join("idx");
        std::fs::create_dir(&from).unwrap();
        std::fs::write(from.join("train-images-idx3-ubyte"), idx_images(6)).unwrap();
        std::fs::write(
            from.join("train-labels-idx1-ubyte"),
            idx_labels(&[0, 1, 0, 1, 0, 1]),
        )
        .unwrap();
        std::fs::write(from.join("t10k-images-idx3-ubyte"), idx_images(12)).unwrap();
        std::fs::write(from.join("t10k-labels-idx1-ubyte"), idx_labels(&[2; 12])).unwrap();
        from
    }

    #[test]
    fn an_import_never_replaces_lists_it_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let from = idx_folder(dir.path());
        let out = dir.path().join("my-dataset");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("train.csv"), "name,class,group\nmine.jpg,7,7\n").unwrap();
        let import = |max_per_class| {
            import_fashion_mnist(&ImportOptions {
                from: from.clone(),
                out: out.clone(),
                max_per_class,
            })
        };
        let err = import(None).unwrap_err().to_string();
        assert!(
            err.contains("train.csv") && err.contains("refusing"),
            "{err}"
        );
        let names: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert_eq!(names.len(), 1, "nothing was written");
        assert!(
            std::fs::read_to_string(out.join("train.csv"))
                .unwrap()
                .contains("mine.jpg")
        );

        // Its own lists are replaced: by a re-run with other options, and (from before the
        // marker) by a re-run that writes the same lists.
        std::fs::remove_file(out.join("train.csv")).unwrap();
        import(None).unwrap();
        assert_eq!(import(Some(1)).unwrap().gallery, 1);
        assert_eq!(import(None).unwrap().gallery, 10);
        std::fs::remove_file(out.join(IMPORT_MARKER)).unwrap();
        import(None).unwrap();
        assert!(
            out.join(IMPORT_MARKER).is_file(),
            "an older import is adopted"
        );
        std::fs::remove_file(out.join(IMPORT_MARKER)).unwrap();
        assert!(import(Some(1)).is_err(), "other lists, no marker");
    }

    #[test]
    fn import_splits_and_writes_challenge_csvs() {
        let dir = tempfile::tempdir().unwrap();
        let from = idx_folder(dir.path());
        let out = dir.path().join("out");
        let summary = import_fashion_mnist(&ImportOptions {
            from,
            out: out.clone(),
            max_per_class: None,
        })
        .unwrap();
        // Test images of class 2: the 1st and 11th are queries.
        assert_eq!(
            summary,
            ImportSummary {
                train: 6,
                val: 0,
                gallery: 10,
                queries: 2,
                images_written: 18
            }
        );
        let queries = std::fs::read_to_string(out.join("queries.csv")).unwrap();
        assert_eq!(
            queries,
            "img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h\ntest/2/00000.png,2,,,,\ntest/2/00010.png,2,,,,\n"
        );
        let png = crate::image::decode_rgb_file(&out.join("test/2/00010.png"), &Default::default())
            .unwrap();
        assert_eq!(png.dimensions(), (3, 2));
        assert_eq!(png.get_pixel(0, 0).0, [60, 60, 60]);
    }
}
