//! `POST /search` bodies: the multipart or raw upload is read as the server reads it, the `bbox`
//! query is parsed, and the image is prepared for the model. Every outcome is an image tensor
//! or a 4xx, never a panic.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use visual_search_data::image::DecodeLimits;
use visual_search_retrieval::index::Preprocessing;
use visual_search_serve::query_image::{parse_bbox, prepare_query};
use visual_search_serve::upload::read_upload;

fuzz_target!(|data: &[u8]| {
    // Layout: one byte of flags, a bbox text up to the first `\n`, a boundary up to the next
    // `\n`, then the body.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let (Some(bbox), Some(boundary), Some(body)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let mut request = Request::builder().method("POST").uri("/search");
    if flags & 1 == 1 {
        let Ok(boundary) = std::str::from_utf8(boundary) else {
            return;
        };
        request = request.header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        );
    }
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let Ok(images) = runtime.block_on(read_upload(request, 1 << 20)) else {
        return;
    };
    let bbox = match std::str::from_utf8(bbox) {
        Ok(text) if !text.is_empty() => match parse_bbox(text) {
            Ok(b) => Some(b),
            Err(_) => return,
        },
        _ => None,
    };
    let pre = Preprocessing {
        size: 32,
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    let limits = DecodeLimits {
        max_pixels: 25_000_000,
        ..DecodeLimits::default()
    };
    for bytes in images {
        if let Ok(tensor) = prepare_query(&bytes, bbox, &pre, &limits) {
            assert_eq!(tensor.len(), 3 * 32 * 32);
        }
    }
});
