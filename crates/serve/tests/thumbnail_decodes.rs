//! `GET /images/{id}` decodes a whole catalogue photo before shrinking it, so it takes one of
//! the decoders' permits like an upload: with every permit taken it waits, and answers 503 at
//! the request deadline instead of decoding beside them (32 thumbnails of 24 Mpx photos at once
//! took the server to 5 GB before). Runs the router in process on a one-photo index.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use visual_search_retrieval::index::{
    Index, IndexDtype, IndexItem, IndexMeta, Preprocessing, build_index,
};
use visual_search_serve::inference::InferenceQueue;
use visual_search_serve::{AppState, ServeConfig, router};

#[tokio::test]
async fn a_thumbnail_waits_for_a_decode_permit() {
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
        ..ServeConfig::default()
    };
    let state = Arc::new(AppState::new(
        Box::new(index),
        0,
        InferenceQueue::without_model(),
        config,
    ));
    let get = || Request::get("/images/0").body(Body::empty()).unwrap();

    let held = state.decoders.acquire().await.unwrap();
    let response = router(state.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(held);
    let response = router(state.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        state.decoders.available_permits(),
        1,
        "the permit is given back"
    );
}
