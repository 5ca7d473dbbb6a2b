//! Upload bytes → decode under serve's limits → box crop / white-border crop → resize → normalise:
//! the path every photo takes (search, serve, index build, training). Must return an error or a
//! tensor, never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visual_search_data::formats::{BBox, Crop};
use visual_search_data::image::crop::white_border_rect;
use visual_search_data::image::{
    DecodeLimits, Normalization, crop_rect, decode_rgb_bytes, resize_rgb,
};

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes choose a box (and whether to use one); the rest is the file.
    if data.len() < 8 {
        return;
    }
    let (head, file) = data.split_at(8);
    let limits = DecodeLimits {
        max_pixels: 25_000_000,
        ..DecodeLimits::default()
    };
    let Ok(image) = decode_rgb_bytes(file, std::path::Path::new("fuzz"), &limits) else {
        return;
    };
    let v = |i: usize| f64::from(i16::from_le_bytes([head[i], head[i + 1]]));
    let crop = match head[0] % 3 {
        0 => Crop::None,
        1 => Crop::WhiteBorder,
        _ => Crop::Box(BBox {
            x: v(0),
            y: v(2),
            w: v(4),
            h: v(6),
        }),
    };
    let rect = crop_rect(&image, &crop);
    let _ = white_border_rect(&image);
    let size = 8 + u32::from(head[1] % 64);
    let resized = resize_rgb(&image, rect, size, size);
    let mut out = vec![0.0f32; 3 * (size * size) as usize];
    Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    }
    .write_chw(&resized, &mut out);
    assert!(out.iter().all(|x| x.is_finite()));
});
