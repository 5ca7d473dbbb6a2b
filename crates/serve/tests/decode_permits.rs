//! `GET /images/{id}` decodes a whole catalogue photo before shrinking it, and `POST /items`
//! decodes the photos added to the catalogue, so both take one of the decoders' permits like a
//! search upload: with every permit taken they wait, and answer 503 at the request deadline
//! instead of decoding beside them (32 thumbnails of 24 Mpx photos at once took the server to
//! 5 GB before). Runs the router in process on a one-photo index.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use visual_search_retrieval::index::{
    Index, IndexDtype, IndexItem, IndexMeta, Preprocessing, build_index,
};
use visual_search_serve::back_office::WriteConfig;
use visual_search_serve::inference::InferenceQueue;
use visual_search_serve::{AppState, ServeConfig, router};

#[tokio::test]
async fn thumbnails_and_catalogue_uploads_wait_for_a_decode_permit() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("photo.png");
    image::RgbImage::from_pixel(600, 400, image::Rgb([200, 30, 30]))
        .save(&photo)
        .unwrap();
    let meta = IndexMeta::new(
        IndexDtype::F32,
        2,
        serde_json::Value::Null,
        Preprocessing {
            size: 32,
            mean: [0.5; 3],
            std: [0.5; 3],
        },
    );
    let folder = dir.path().join("index");
    build_index(&folder, meta, &[IndexItem::new(1, &photo)], &[1.0, 0.0]).unwrap();
    let index = Index::open(&folder).unwrap();
    let config = ServeConfig {
        max_concurrent_decodes: 1,
        request_timeout: Duration::from_millis(300),
        writes: Some(WriteConfig {
            token: "a-token-of-sixteen-chars".into(),
            upload_dir: dir.path().join("uploads"),
        }),
        ..ServeConfig::default()
    };
    let state = Arc::new(AppState::new(
        Box::new(index),
        0,
        InferenceQueue::without_model(),
        config,
    ));
    std::fs::create_dir(dir.path().join("uploads")).unwrap();
    let get = || Request::get("/images/0").body(Body::empty()).unwrap();
    let png = std::fs::read(&photo).unwrap();
    let add = || {
        let mut form = b"--XX\r\nContent-Disposition: form-data; name=\"label\"\r\n\r\n7\r\n\
                         --XX\r\nContent-Disposition: form-data; name=\"image\"; \
                         filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n"
            .to_vec();
        form.extend_from_slice(&png);
        form.extend_from_slice(b"\r\n--XX--\r\n");
        Request::post("/items")
            .header("authorization", "Bearer a-token-of-sixteen-chars")
            .header("content-type", "multipart/form-data; boundary=XX")
            .body(Body::from(form))
            .unwrap()
    };

    let held = state.decoders.acquire().await.unwrap();
    let response = router(state.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = router(state.clone()).oneshot(add()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(held);
    let response = router(state.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Decoded now (this server has no model to embed it with, which it says otherwise).
    let response = router(state.clone()).oneshot(add()).await.unwrap();
    assert_ne!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        state.decoders.available_permits(),
        1,
        "the permit is given back"
    );
}
