//! The fields the pipeline needs from Amazon review and metadata dumps, in both published
//! layouts (SPEC "Mining pairs from Amazon reviews"):
//! - 2018 (McAuley lab): reviews carry `asin` and `image: [url]`; metadata carries `asin`,
//!   `title`, `imageURLHighRes` / `imageURL`.
//! - 2023 (McAuley lab): reviews carry `asin`, `parent_asin` and `images: [{large_image_url, …}]`;
//!   metadata carries `parent_asin`, `title`, `images: [{hi_res, large, thumb, …}]`.
//!
//! A product is keyed by `parent_asin` when present (2023 metadata is per parent), else `asin`.
//! The largest image variant is taken. Other fields are ignored, so new fields never break
//! parsing; a line that is not a JSON object, or that has no ASIN, is malformed.

use std::collections::HashSet;

use serde::Deserialize;

/// One image entry: a bare URL (2018) or an object with size variants (2023).
#[derive(Deserialize)]
#[serde(untagged)]
enum ImageEntry {
    Url(String),
    Sizes {
        #[serde(default)]
        hi_res: Option<String>,
        #[serde(default)]
        large: Option<String>,
        #[serde(default)]
        large_image_url: Option<String>,
        #[serde(default)]
        medium_image_url: Option<String>,
        #[serde(default)]
        small_image_url: Option<String>,
        #[serde(default)]
        thumb: Option<String>,
    },
}

impl ImageEntry {
    fn largest(self) -> Option<String> {
        match self {
            ImageEntry::Url(u) => Some(u),
            ImageEntry::Sizes {
                hi_res,
                large,
                large_image_url,
                medium_image_url,
                small_image_url,
                thumb,
            } => [
                hi_res,
                large_image_url,
                large,
                medium_image_url,
                small_image_url,
                thumb,
            ]
            .into_iter()
            .flatten()
            .find(|u| !u.trim().is_empty()),
        }
    }
}

#[derive(Deserialize)]
struct RawRecord {
    #[serde(default)]
    asin: Option<String>,
    #[serde(default)]
    parent_asin: Option<String>,
    #[serde(default)]
    title: Option<serde_json::Value>,
    #[serde(default)]
    image: Option<Vec<ImageEntry>>,
    #[serde(default)]
    images: Option<Vec<ImageEntry>>,
    #[serde(default, rename = "imageURLHighRes")]
    image_url_high_res: Option<Vec<String>>,
    #[serde(default, rename = "imageURL")]
    image_url: Option<Vec<String>>,
}

impl RawRecord {
    fn parse(line: &str) -> Result<Self, String> {
        serde_json::from_str(line).map_err(|e| format!("not a review/metadata JSON object: {e}"))
    }

    fn key(&self) -> Result<String, String> {
        [&self.parent_asin, &self.asin]
            .into_iter()
            .flatten()
            .map(|a| a.trim())
            .find(|a| !a.is_empty())
            .map(str::to_string)
            .ok_or_else(|| "no asin or parent_asin".to_string())
    }
}

/// The http(s) URLs of an image list, trimmed.
fn urls(entries: Option<Vec<ImageEntry>>) -> impl Iterator<Item = String> {
    entries
        .into_iter()
        .flatten()
        .filter_map(ImageEntry::largest)
        .map(|u| u.trim().to_string())
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
}

/// URLs in first-seen order without repeats, in linear time (a crafted record can list
/// hundreds of thousands), also answering "is this picture already kept at another size?".
#[derive(Default)]
struct UniqueUrls {
    order: Vec<String>,
    seen: HashSet<String>,
    pictures: HashSet<String>,
}

impl UniqueUrls {
    fn push(&mut self, url: String) {
        if !self.seen.contains(&url) {
            self.pictures.insert(image_id(&url).to_string());
            self.seen.insert(url.clone());
            self.order.push(url);
        }
    }

    fn has_picture(&self, url: &str) -> bool {
        self.pictures.contains(image_id(url))
    }
}

/// A review: which product, and the photos its author attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub product: String,
    pub image_urls: Vec<String>,
}

/// A product's metadata: its title and catalogue images.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductMeta {
    pub product: String,
    pub title: Option<String>,
    pub image_urls: Vec<String>,
}

/// Parses one review line.
pub fn parse_review(line: &str) -> Result<Review, String> {
    let raw = RawRecord::parse(line)?;
    let product = raw.key()?;
    let mut image_urls = UniqueUrls::default();
    urls(raw.images)
        .chain(urls(raw.image))
        .for_each(|u| image_urls.push(u));
    Ok(Review {
        product,
        image_urls: image_urls.order,
    })
}

/// Parses one metadata line.
pub fn parse_meta(line: &str) -> Result<ProductMeta, String> {
    let raw = RawRecord::parse(line)?;
    let product = raw.key()?;
    let title = match raw.title {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    };
    let wrap = |v: Option<Vec<String>>| v.map(|v| v.into_iter().map(ImageEntry::Url).collect());
    let mut image_urls = UniqueUrls::default();
    urls(raw.images).for_each(|u| image_urls.push(u));
    for u in urls(wrap(raw.image_url_high_res)).chain(urls(wrap(raw.image_url))) {
        // 2018 `imageURL` repeats `imageURLHighRes` at a smaller size; keep the large one only.
        if !image_urls.has_picture(&u) {
            image_urls.push(u);
        }
    }
    Ok(ProductMeta {
        product,
        title,
        image_urls: image_urls.order,
    })
}

/// The picture id of an Amazon image URL: the file name up to its first dot. 2018 metadata
/// lists each picture twice, `…/I/71abc.jpg` in `imageURLHighRes` and `…/I/71abc._SS40_.jpg` in
/// `imageURL`; both have the id `71abc`.
fn image_id(url: &str) -> &str {
    let name = url.rsplit('/').next().unwrap_or(url);
    name.split('.').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_with_a_huge_image_list_is_deduplicated_in_order() {
        // 100,000 URLs, each listed twice: a scan per URL would be 10^10 comparisons.
        let urls: Vec<String> = (0..200_000)
            .map(|i| format!("https://x/I/p{}.jpg", i % 100_000))
            .collect();
        let line = serde_json::json!({"asin": "B1", "image": urls}).to_string();
        let r = parse_review(&line).unwrap();
        assert_eq!(r.image_urls.len(), 100_000);
        assert_eq!(r.image_urls[1], "https://x/I/p1.jpg");
        let small: Vec<String> = (0..100_000)
            .map(|i| format!("https://x/I/p{i}._SS40_.jpg"))
            .collect();
        let line = serde_json::json!({"asin": "B1", "imageURLHighRes": &urls[..100_000], "imageURL": small})
            .to_string();
        assert_eq!(parse_meta(&line).unwrap().image_urls.len(), 100_000);
    }

    #[test]
    fn reviews_of_both_layouts() {
        let r = parse_review(
            r#"{"overall": 5.0, "asin": "B01", "reviewText": "ok", "image": ["https://x/I/a._SY88.jpg"]}"#,
        )
        .unwrap();
        assert_eq!(r.product, "B01");
        assert_eq!(r.image_urls, vec!["https://x/I/a._SY88.jpg"]);
        let r = parse_review(
            r#"{"rating": 4, "asin": "B02", "parent_asin": "P02", "images": [{"small_image_url": "https://x/s.jpg", "large_image_url": "https://x/l.jpg"}]}"#,
        )
        .unwrap();
        assert_eq!(r.product, "P02");
        assert_eq!(r.image_urls, vec!["https://x/l.jpg"]);
        let r = parse_review(r#"{"asin": "B03", "images": []}"#).unwrap();
        assert!(r.image_urls.is_empty());
    }

    #[test]
    fn malformed_lines_say_why() {
        assert!(
            parse_review("{'asin': 'B01'}")
                .unwrap_err()
                .contains("JSON")
        );
        assert!(
            parse_review(r#"{"text": "no id"}"#)
                .unwrap_err()
                .contains("asin")
        );
        assert!(parse_review(r#"[1, 2]"#).is_err());
    }

    #[test]
    fn metadata_of_both_layouts() {
        let m = parse_meta(
            r#"{"asin": "B01", "title": "Tea", "imageURL": ["https://x/I/71a._SS40_.jpg"], "imageURLHighRes": ["https://x/I/71a.jpg", "https://x/I/81b.jpg"]}"#,
        )
        .unwrap();
        assert_eq!(m.title.as_deref(), Some("Tea"));
        assert_eq!(
            m.image_urls,
            vec!["https://x/I/71a.jpg", "https://x/I/81b.jpg"]
        );
        let m = parse_meta(
            r#"{"parent_asin": "P9", "title": "", "images": [{"thumb": "https://x/t.jpg", "large": "https://x/l.jpg", "hi_res": null}]}"#,
        )
        .unwrap();
        assert_eq!(m.product, "P9");
        assert_eq!(m.title, None);
        assert_eq!(m.image_urls, vec!["https://x/l.jpg"]);
    }
}
