//! Dev/test-set lists: `gallery.csv` (`img_path,product_id`) and `queries.csv`
//! (`img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h`), paths relative to the set's root.
//!
//! The real dev set carries extra id columns (`seller_img_id`, `user_img_id`) in other orders;
//! columns are found by name. A query's box may be absent (no bbox columns) or empty (all four
//! cells empty): both mean the whole image. A box with only some cells filled, or a negative
//! size, is an error. Gallery images get the white-border crop (SPEC).

use std::path::{Path, PathBuf};

use super::{BBox, Crop, Sample};
use crate::csv_table::{CsvTable, Parsed, parse_rows};
use crate::error::Result;

/// One gallery row.
#[derive(Debug, Clone, PartialEq)]
pub struct GalleryRow {
    pub img_path: PathBuf,
    pub product_id: i64,
    pub line: u64,
}

/// One query row.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRow {
    pub img_path: PathBuf,
    pub product_id: i64,
    pub bbox: Option<BBox>,
    pub line: u64,
}

/// Parses a gallery CSV.
pub fn parse_gallery(csv_path: &Path) -> Result<Parsed<GalleryRow>> {
    let mut table = CsvTable::open(csv_path)?;
    let img_path = table.column("img_path")?;
    let product_id = table.column("product_id")?;
    Ok(parse_rows(&mut table, |row| {
        Ok(GalleryRow {
            img_path: row.relative_path(&img_path)?,
            product_id: row.integer(&product_id)?,
            line: row.line(),
        })
    }))
}

const BBOX_COLUMNS: [&str; 4] = ["bbox_x", "bbox_y", "bbox_w", "bbox_h"];

/// Parses a queries CSV.
pub fn parse_queries(csv_path: &Path) -> Result<Parsed<QueryRow>> {
    let mut table = CsvTable::open(csv_path)?;
    let img_path = table.column("img_path")?;
    let product_id = table.column("product_id")?;
    let present: Vec<_> = BBOX_COLUMNS
        .iter()
        .map(|c| table.optional_column(c))
        .collect();
    let bbox_columns = if present.iter().all(Option::is_none) {
        None
    } else {
        // Some but not all box columns: name the first missing one.
        let mut columns = Vec::with_capacity(4);
        for name in BBOX_COLUMNS {
            columns.push(table.column(name)?);
        }
        Some(columns)
    };
    Ok(parse_rows(&mut table, |row| {
        let bbox = match &bbox_columns {
            None => None,
            Some(cols) => {
                let values = cols
                    .iter()
                    .map(|c| row.optional_number(c))
                    .collect::<Result<Vec<_>>>()?;
                match values.iter().position(Option::is_none) {
                    Some(_) if values.iter().all(Option::is_none) => None,
                    Some(i) => {
                        return Err(
                            row.error(&cols[i], "box is partly empty; fill all four cells or none")
                        );
                    }
                    None => {
                        let [x, y, w, h] =
                            [values[0], values[1], values[2], values[3]].map(|v| v.unwrap_or(0.0));
                        if w < 0.0 || h < 0.0 {
                            let col = if w < 0.0 { &cols[2] } else { &cols[3] };
                            return Err(row.error(col, "box size must not be negative"));
                        }
                        // A zero-area box means "no box" (SPEC: empty box = whole image).
                        (w > 0.0 && h > 0.0).then_some(BBox { x, y, w, h })
                    }
                }
            }
        };
        Ok(QueryRow {
            img_path: row.relative_path(&img_path)?,
            product_id: row.integer(&product_id)?,
            bbox,
            line: row.line(),
        })
    }))
}

/// Gallery samples: `<root>/<img_path>`, white border removed.
pub fn gallery_samples(rows: &[GalleryRow], root: &Path) -> Vec<Sample> {
    rows.iter()
        .map(|r| Sample {
            path: root.join(&r.img_path),
            label: r.product_id,
            crop: Crop::WhiteBorder,
        })
        .collect()
}

/// Query samples: `<root>/<img_path>`, cropped to their box when they have one.
pub fn query_samples(rows: &[QueryRow], root: &Path) -> Vec<Sample> {
    rows.iter()
        .map(|r| Sample {
            path: root.join(&r.img_path),
            label: r.product_id,
            crop: r.bbox.map_or(Crop::None, Crop::Box),
        })
        .collect()
}

/// Both halves of a dev set, strictly read (the first bad row is an error).
#[derive(Debug, Clone)]
pub struct DevSet {
    pub gallery: Vec<Sample>,
    pub queries: Vec<Sample>,
}

/// Reads `<root>/<gallery>` and `<root>/<queries>`.
pub fn load_dev_set(root: &Path, gallery: &str, queries: &str) -> Result<DevSet> {
    let g = parse_gallery(&root.join(gallery))?.into_strict()?;
    let q = parse_queries(&root.join(queries))?.into_strict()?;
    Ok(DevSet {
        gallery: gallery_samples(&g, root),
        queries: query_samples(&q, root),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_table::temp_csv as csv;

    #[test]
    fn real_dev_set_column_orders_with_extra_ids() {
        let g = csv("seller_img_id,img_path,product_id\n10,gallery/a.jpg,5\n");
        let rows = parse_gallery(g.path()).unwrap().into_strict().unwrap();
        assert_eq!(rows[0].img_path, PathBuf::from("gallery/a.jpg"));
        assert_eq!(rows[0].product_id, 5);

        let q = csv(
            "user_img_id,img_path,bbox_x,bbox_y,bbox_w,bbox_h,product_id\n\
             1,queries/q.jpg,10,20,30,40,5\n2,queries/r.jpg,,,,,6\n",
        );
        let rows = parse_queries(q.path()).unwrap().into_strict().unwrap();
        assert_eq!(
            rows[0].bbox,
            Some(BBox {
                x: 10.0,
                y: 20.0,
                w: 30.0,
                h: 40.0
            })
        );
        assert_eq!(rows[0].product_id, 5);
        assert_eq!(rows[1].bbox, None);
        assert_eq!(rows[1].product_id, 6);
    }

    #[test]
    fn queries_without_box_columns_are_whole_images() {
        let q = csv("img_path,product_id\nq.jpg,1\n");
        let rows = parse_queries(q.path()).unwrap().into_strict().unwrap();
        assert_eq!(rows[0].bbox, None);
    }

    #[test]
    fn partial_box_columns_or_cells_are_errors() {
        let q = csv("img_path,product_id,bbox_x,bbox_y\nq.jpg,1,1,2\n");
        assert!(
            parse_queries(q.path())
                .unwrap_err()
                .to_string()
                .contains("bbox_w")
        );

        let q = csv(
            "img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h\nq.jpg,1,1,,3,4\nr.jpg,1,1,2,-3,4\n",
        );
        let parsed = parse_queries(q.path()).unwrap();
        let m: Vec<_> = parsed.errors.iter().map(|e| e.to_string()).collect();
        assert!(m[0].contains("line 2") && m[0].contains("bbox_y"), "{m:?}");
        assert!(m[1].contains("line 3") && m[1].contains("bbox_w"), "{m:?}");
    }

    #[test]
    fn samples_carry_crops() {
        let root = Path::new("/data/dev");
        let g = gallery_samples(
            &[GalleryRow {
                img_path: "g.jpg".into(),
                product_id: 1,
                line: 2,
            }],
            root,
        );
        assert_eq!(g[0].crop, Crop::WhiteBorder);
        assert_eq!(g[0].path, PathBuf::from("/data/dev/g.jpg"));
    }
}
