//! The extent of the emission the model saw: its islands and its largest angular size,
//! measured on the 8-bit model image, so that the same numbers can be measured on the
//! MiraBest training images (which are only 8-bit) and compared with a survey's sources
//! (`radiogate_model.morphology` in Python measures them the same way).
//!
//! Emission is every pixel above 0 (above 3 sigma before scaling, and not truncated to 0 by
//! the 8 bits). An island is a group of emission pixels that touch, diagonals included. Above
//! 3 sigma some noise always survives, alone or in small groups, so an island counts only
//! with at least [`MIN_ISLAND_PIXELS`] pixels and a peak of at least 5/3 of the image's
//! faintest emission (which lies just above 3 sigma: the peak is then at about 5 sigma, the
//! usual detection threshold of source finders). The largest angular size is the longest
//! distance between the centres of two pixels of the counted islands, in model pixels. The
//! emission is truncated when a counted island reaches the image's edge (the model image is
//! the cutout's central 150 x 150 pixels, so the source may go on beyond it) or touches
//! blank pixels that reach the edge (where the window ran off its survey image; an isolated
//! blank pixel inside the image does not count): its size is then a lower bound.

use crate::domain::EmissionShape;

/// The fewest pixels an island needs to count: about the area of FIRST's 5.4 arcsec beam in
/// 1.8 arcsec pixels (1.133 x 3^2 = 10.2).
pub const MIN_ISLAND_PIXELS: usize = 10;

/// Measures the emission of a `side` x `side` row-major 8-bit image; `blank`, where given,
/// marks its pixels that hold no data (NaN before scaling).
pub fn measure(image: &[u8], side: usize, blank: Option<&[bool]>) -> EmissionShape {
    debug_assert_eq!(image.len(), side * side);
    debug_assert!(blank.is_none_or(|b| b.len() == image.len()));
    if side == 0 {
        return EmissionShape::default();
    }
    // The image inside a border of one empty pixel, so that every pixel has its eight
    // neighbours at fixed offsets and none needs a bounds test. A pixel found for an island
    // is emptied there, which also marks it seen.
    let wide = side + 2;
    let mut unseen = bordered(image, side);
    let off = blank.map(|blank| bordered(&off_image(blank, side), side));
    let w = wide as isize;
    let neighbours = [-w - 1, -w, -w + 1, -1, 1, w - 1, w, w + 1];
    let mut island = Vec::new();
    // Per row, the leftmost and rightmost column of a counted pixel: the pair farthest apart
    // are two of these (the ends of the convex hull's rows).
    let mut rows: Vec<Option<(usize, usize)>> = vec![None; side];
    let mut shape = EmissionShape::default();
    // The faintest emission (0 wraps to 255 and is never the least; 256 when there is none).
    let faintest = u32::from(
        image
            .iter()
            .map(|v| v.wrapping_sub(1))
            .min()
            .unwrap_or(u8::MAX),
    ) + 1;
    // Most of an image is empty, and more of it as islands are found: pass over it 16
    // pixels at a time (a test without an early exit, one vector compare; `all` tested
    // pixel after pixel).
    const STRETCH: usize = 16;
    let mut start = 0;
    while start < unseen.len() {
        if start % STRETCH == 0
            && unseen
                .get(start..start + STRETCH)
                .is_some_and(|run| run.iter().fold(0, |any, &v| any | v) == 0)
        {
            start += STRETCH;
            continue;
        }
        start += 1;
        let first = start - 1;
        if unseen[first] == 0 {
            continue;
        }
        // Flood fill of one island (indices into `unseen`), `island` doubling as the queue.
        island.clear();
        island.push(first);
        let mut peak = std::mem::take(&mut unseen[first]);
        let mut next = 0;
        let mut beside_blank = false;
        while let Some(&at) = island.get(next) {
            next += 1;
            for d in neighbours {
                let n = at.wrapping_add_signed(d);
                let v = std::mem::take(&mut unseen[n]);
                if v != 0 {
                    peak = peak.max(v);
                    island.push(n);
                }
            }
            if let Some(off) = &off {
                beside_blank |=
                    off[at] || neighbours.iter().any(|&d| off[at.wrapping_add_signed(d)]);
            }
        }
        if island.len() < MIN_ISLAND_PIXELS || 3 * u32::from(peak) < 5 * faintest {
            continue;
        }
        shape.islands += 1;
        shape.pixels += u32::try_from(island.len()).unwrap_or(u32::MAX);
        shape.truncated |= beside_blank;
        for &at in &island {
            let (y, x) = (at / wide - 1, at % wide - 1);
            let row = rows[y].get_or_insert((x, x));
            *row = (row.0.min(x), row.1.max(x));
            shape.truncated |= y == 0 || x == 0 || y == side - 1 || x == side - 1;
        }
    }
    // The row ends in (row, column) order, then their convex hull, whose vertices hold the
    // farthest pair.
    let ends: Vec<(i64, i64)> = rows
        .iter()
        .enumerate()
        .filter_map(|(y, row)| row.map(|(left, right)| (y, left, right)))
        .flat_map(|(y, left, right)| [(y as i64, left as i64), (y as i64, right as i64)])
        .collect();
    let hull = convex_hull(&ends);
    let mut farthest = 0i64;
    for (i, a) in hull.iter().enumerate() {
        for b in &hull[i + 1..] {
            farthest = farthest.max((a.0 - b.0).pow(2) + (a.1 - b.1).pow(2));
        }
    }
    shape.largest_size = (farthest as f64).sqrt() as f32;
    shape
}

/// A `side` x `side` row-major image inside a border of one pixel of `T::default()`.
fn bordered<T: Copy + Default>(image: &[T], side: usize) -> Vec<T> {
    let wide = side + 2;
    let mut out = vec![T::default(); wide * wide];
    for (row, pixels) in out[wide..]
        .chunks_exact_mut(wide)
        .zip(image.chunks_exact(side))
    {
        row[1..=side].copy_from_slice(pixels);
    }
    out
}

/// The blank pixels joined to the image's edge through blank pixels (diagonals included):
/// where the window ran off its image.
fn off_image(blank: &[bool], side: usize) -> Vec<bool> {
    let mut off = vec![false; blank.len()];
    let mut queue: Vec<usize> = (0..side)
        .flat_map(|i| [i, (side - 1) * side + i, i * side, i * side + side - 1])
        .filter(|&i| blank[i])
        .collect();
    for &i in &queue {
        off[i] = true;
    }
    while let Some(at) = queue.pop() {
        let (y, x) = (at / side, at % side);
        for ny in y.saturating_sub(1)..=(y + 1).min(side - 1) {
            for nx in x.saturating_sub(1)..=(x + 1).min(side - 1) {
                let n = ny * side + nx;
                if blank[n] && !off[n] {
                    off[n] = true;
                    queue.push(n);
                }
            }
        }
    }
    off
}

/// The vertices of the convex hull of `points`, which are sorted (Andrew's monotone chain;
/// collinear points dropped, so a line keeps its two ends).
fn convex_hull(points: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let turn = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(points.len() + 1);
    for pass in [points.to_vec(), points.iter().rev().copied().collect()] {
        let start = hull.len();
        for p in pass {
            while hull.len() >= start + 2
                && turn(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0
            {
                hull.pop();
            }
            hull.push(p);
        }
        // The last point of each chain is the first of the other.
        hull.pop();
    }
    if hull.is_empty() {
        hull.extend(points.first());
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `on` at 200, and one isolated pixel at 100 (the faintest emission, so that islands
    /// of 200 are bright enough to count) where it touches none of them.
    fn image(side: usize, on: &[(usize, usize)]) -> Vec<u8> {
        let mut image = vec![0u8; side * side];
        for &(y, x) in on {
            image[y * side + x] = 200;
        }
        let lone = (0..side * side)
            .find(|&i| {
                let (y, x) = ((i / side) as i64, (i % side) as i64);
                on.iter()
                    .all(|&(oy, ox)| (oy as i64 - y).abs() > 1 || (ox as i64 - x).abs() > 1)
            })
            .expect("room for a lone pixel");
        image[lone] = 100;
        image
    }

    /// A filled `h` x `w` block with its top-left pixel at (y, x).
    fn block(y: usize, x: usize, h: usize, w: usize) -> Vec<(usize, usize)> {
        (y..y + h)
            .flat_map(|r| (x..x + w).map(move |c| (r, c)))
            .collect()
    }

    #[test]
    fn two_lobes_span_from_corner_to_corner_and_noise_does_not_count() {
        let mut on = block(10, 10, 4, 5);
        on.extend(block(40, 60, 3, 4));
        // Noise: a single pixel and a diagonal pair far away, islands of fewer than 10.
        on.extend([(0, 149), (140, 0), (141, 1)]);
        let shape = measure(&image(150, &on), 150, None);
        assert_eq!(shape.islands, 2);
        assert_eq!(shape.pixels, 20 + 12);
        // From (10, 10) to (42, 63).
        let expected = ((32.0f64).powi(2) + (53.0f64).powi(2)).sqrt() as f32;
        assert_eq!(shape.largest_size, expected);
    }

    #[test]
    fn diagonal_neighbours_join_an_island() {
        // A diagonal line of 10 pixels is one island of 10: it counts.
        let on: Vec<_> = (0..10).map(|i| (20 + i, 30 + i)).collect();
        let shape = measure(&image(150, &on), 150, None);
        assert_eq!((shape.islands, shape.pixels), (1, 10));
        assert_eq!(shape.largest_size, (2.0f64 * 81.0).sqrt() as f32);
    }

    #[test]
    fn a_faint_island_is_noise_however_large() {
        // Islands of 20 pixels at 150 and 170 over a faintest emission of 100: only the one
        // at 170 reaches 5/3 of it.
        let mut img = image(150, &[]);
        for (y, x) in block(10, 10, 4, 5) {
            img[y * 150 + x] = 150;
        }
        for (y, x) in block(50, 50, 4, 5) {
            img[y * 150 + x] = 170;
        }
        let shape = measure(&img, 150, None);
        assert_eq!((shape.islands, shape.pixels), (1, 20));
    }

    #[test]
    fn an_empty_image_has_no_extent() {
        assert_eq!(measure(&[], 0, None), EmissionShape::default());
        assert_eq!(measure(&[], 0, Some(&[])), EmissionShape::default());
    }

    #[test]
    fn an_image_of_noise_alone_has_no_extent() {
        let shape = measure(&image(150, &block(5, 5, 3, 3)), 150, None);
        assert_eq!(shape, EmissionShape::default());
        assert_eq!(
            measure(&vec![0; 150 * 150], 150, None),
            EmissionShape::default()
        );
    }

    #[test]
    fn the_largest_size_is_the_farthest_pair_of_any_pixels() {
        // Random blobs: the hull of the row ends gives what comparing every pair gives.
        let mut state = 7u64;
        let mut random = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        for _ in 0..200 {
            let mut on = Vec::new();
            for _ in 0..1 + random(4) {
                let (y, x, h, w) = (random(140), random(140), 1 + random(10), 1 + random(10));
                on.extend(block(y, x, h, w).into_iter().filter(|_| random(4) > 0));
            }
            let img = image(150, &on);
            let shape = measure(&img, 150, None);
            // Every pixel of a counted island, by brute force.
            let counted: Vec<(f64, f64)> = (0..150 * 150)
                .filter(|&i| img[i] != 0 && island_size(&img, i) >= MIN_ISLAND_PIXELS)
                .map(|i| ((i / 150) as f64, (i % 150) as f64))
                .collect();
            let mut farthest = 0.0f64;
            for a in &counted {
                for b in &counted {
                    farthest = farthest.max((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2));
                }
            }
            assert_eq!(shape.pixels as usize, counted.len());
            assert_eq!(shape.largest_size, farthest.sqrt() as f32);
        }
    }

    /// The size of the island holding pixel `i` (flood fill without shortcuts).
    fn island_size(img: &[u8], i: usize) -> usize {
        let mut seen = std::collections::HashSet::from([i]);
        let mut todo = vec![i];
        while let Some(at) = todo.pop() {
            let (y, x) = ((at / 150) as i64, (at % 150) as i64);
            for (dy, dx) in (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (dy, dx))) {
                let (ny, nx) = (y + dy, x + dx);
                if (0..150).contains(&ny) && (0..150).contains(&nx) {
                    let n = (ny * 150 + nx) as usize;
                    if img[n] != 0 && seen.insert(n) {
                        todo.push(n);
                    }
                }
            }
        }
        seen.len()
    }

    #[test]
    fn islands_at_the_edges_are_measured_whole() {
        let mut on = block(0, 0, 2, 5);
        on.extend(block(148, 145, 2, 5));
        let shape = measure(&image(150, &on), 150, None);
        assert_eq!((shape.islands, shape.pixels), (2, 20));
        assert_eq!(shape.largest_size, (2.0f64 * 149.0 * 149.0).sqrt() as f32);
        assert!(shape.truncated);
    }

    #[test]
    fn an_island_beside_blank_pixels_is_truncated() {
        // Columns 75 on blank (a window that ran off its image): an island whose pixels
        // reach column 74 touches them and is cut off; one ending at column 73 is whole.
        let blank: Vec<bool> = (0..150 * 150).map(|i| i % 150 >= 75).collect();
        for (x, truncated) in [(71, true), (70, false)] {
            let shape = measure(&image(150, &block(60, x, 3, 4)), 150, Some(&blank));
            assert_eq!((shape.islands, shape.truncated), (1, truncated), "x {x}");
        }
        // A blank stretch that reaches the edge, diagonal to the island's corner, is enough;
        // an isolated blank pixel there (a bad pixel inside the image) is not.
        let mut corner = vec![false; 150 * 150];
        for y in 63..150 {
            corner[y * 150 + 75] = true;
        }
        let island = image(150, &block(60, 71, 3, 4));
        assert!(measure(&island, 150, Some(&corner)).truncated);
        let mut lone = vec![false; 150 * 150];
        lone[63 * 150 + 75] = true;
        assert!(!measure(&island, 150, Some(&lone)).truncated);
        // Without the mask the same island is whole.
        assert!(!measure(&image(150, &block(60, 71, 3, 4)), 150, None).truncated);
    }

    #[test]
    fn only_a_counted_island_at_an_edge_truncates() {
        // An island one pixel in from each edge in turn is whole; on the edge it is not.
        for (y, x, h, w) in [
            (1, 60, 3, 4),
            (60, 1, 4, 3),
            (146, 60, 3, 4),
            (60, 146, 4, 3),
        ] {
            assert!(!measure(&image(150, &block(y, x, h, w)), 150, None).truncated);
        }
        for (y, x, h, w) in [
            (0, 60, 3, 4),
            (60, 0, 4, 3),
            (147, 60, 3, 4),
            (60, 147, 4, 3),
        ] {
            assert!(measure(&image(150, &block(y, x, h, w)), 150, None).truncated);
        }
        // Noise at the edge (an island of 9) does not.
        let mut on = block(60, 60, 3, 4);
        on.extend(block(0, 0, 3, 3));
        let shape = measure(&image(150, &on), 150, None);
        assert_eq!(shape.islands, 1);
        assert!(!shape.truncated);
    }
}
