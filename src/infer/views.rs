//! Test-time views (`inference.views`): each image is run as it is and turned by quarter
//! turns, mirrored, or both, and the outputs are averaged: the probabilities, and each
//! gate's attention map turned back to the image's own orientation. Quarter turns and
//! mirrors of a square image move whole pixels, so a view loses nothing; the model was
//! trained on images rotated and mirrored at random, and a radio galaxy has no preferred
//! orientation on the sky. On the MiraBest test sets the 8 views raise the shipped models'
//! accuracy from 93.3% to 95.2% (MiraBest*) and from 83.0% to 85.6% (MiraBest)
//! (`python -m radiogate_model.evaluate --views 8`), for 8 times the inference.
//!
//! The views' attention maps are mapped back exactly at 150 x 150; at a gate's coarser
//! grid (37 x 37 for 150 / 4, rounded down) a turn moves the grid by about a fine pixel,
//! which the summary's 5-pixel cells do not resolve.

use crate::config::VIEW_COUNTS;
use crate::domain::{AttentionMap, ModelOutput};

/// One view: `turns` quarter turns anticlockwise (as numpy's `rot90` turns an image whose
/// first axis is y), then a mirror in x when `mirrored` (`np.rot90(image, turns)[:, ::-1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    turns: u8,
    mirrored: bool,
}

const fn view(turns: u8, mirrored: bool) -> View {
    View { turns, mirrored }
}

/// The view sets `inference.views` can name, by their size: the image alone; it and its
/// mirror; its four quarter turns; all eight (the square's symmetries).
const SETS: [&[View]; 4] = [
    &[view(0, false)],
    &[view(0, false), view(0, true)],
    &[
        view(0, false),
        view(1, false),
        view(2, false),
        view(3, false),
    ],
    &[
        view(0, false),
        view(1, false),
        view(2, false),
        view(3, false),
        view(0, true),
        view(1, true),
        view(2, true),
        view(3, true),
    ],
];

/// The set of `count` views; None for a count that has none.
pub fn set(count: usize) -> Option<&'static [View]> {
    VIEW_COUNTS
        .iter()
        .position(|&c| c == count)
        .map(|index| SETS[index])
}

impl View {
    /// The pixel of the image that pixel (x, y) of the view shows, on a `side` x `side`
    /// grid.
    fn source(self, x: usize, y: usize, side: usize) -> (usize, usize) {
        let last = side - 1;
        // The mirror came last, so it is undone first.
        let (mut x, mut y) = if self.mirrored { (last - x, y) } else { (x, y) };
        // One anticlockwise turn: view (x, y) shows (last - y, x); turns compose.
        for _ in 0..self.turns {
            (x, y) = (last - y, x);
        }
        (x, y)
    }

    /// The view of a square row-major image.
    pub fn apply(self, image: &[f32], side: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(side * side);
        for y in 0..side {
            for x in 0..side {
                let (sx, sy) = self.source(x, y, side);
                out.push(image[sy * side + sx]);
            }
        }
        out
    }

    /// Adds a map made in this view to `sum`, turned back to the image's orientation.
    fn add_back(self, map: &[f32], side: usize, sum: &mut [f64]) {
        for y in 0..side {
            for x in 0..side {
                let (sx, sy) = self.source(x, y, side);
                sum[sy * side + sx] += f64::from(map[y * side + x]);
            }
        }
    }
}

/// Each image's views, image by image, in the set's order.
pub fn expand(images: &[Vec<f32>], views: &[View], side: usize) -> Vec<Vec<f32>> {
    images
        .iter()
        .flat_map(|image| views.iter().map(move |v| v.apply(image, side)))
        .collect()
}

/// One output per image from the outputs of its views ([`expand`]'s order): the mean of
/// the probabilities and of each gate's map turned back, each summed in the set's order,
/// so an image's result does not depend on the batch it ran in.
pub fn combine(outputs: Vec<ModelOutput>, views: &[View]) -> Vec<ModelOutput> {
    let n = views.len() as f64;
    outputs
        .chunks(views.len())
        .map(|group| {
            let mut probs = [0f64; 2];
            for output in group {
                probs[0] += f64::from(output.probs[0]);
                probs[1] += f64::from(output.probs[1]);
            }
            let attention = (0..group[0].attention.len())
                .map(|gate| {
                    let side = group[0].attention[gate].side;
                    let mut sum = vec![0f64; side * side];
                    for (output, view) in group.iter().zip(views) {
                        view.add_back(&output.attention[gate].values, side, &mut sum);
                    }
                    AttentionMap {
                        side,
                        values: sum.into_iter().map(|v| (v / n) as f32).collect(),
                    }
                })
                .collect();
            ModelOutput {
                probs: probs.map(|p| (p / n) as f32),
                attention,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(side: usize) -> Vec<f32> {
        (0..side * side).map(|v| v as f32).collect()
    }

    #[test]
    fn views_turn_and_mirror_as_numpy_does() {
        // numpy: a = [[0, 1], [2, 3]]; np.rot90(a) = [[1, 3], [0, 2]];
        // np.rot90(a)[:, ::-1] = [[3, 1], [2, 0]]; np.rot90(a, 2) = [[3, 2], [1, 0]].
        let a = grid(2);
        assert_eq!(view(1, false).apply(&a, 2), [1.0, 3.0, 0.0, 2.0]);
        assert_eq!(view(2, false).apply(&a, 2), [3.0, 2.0, 1.0, 0.0]);
        assert_eq!(view(0, true).apply(&a, 2), [1.0, 0.0, 3.0, 2.0]);
        assert_eq!(view(1, true).apply(&a, 2), [3.0, 1.0, 2.0, 0.0]);
    }

    #[test]
    fn the_eight_views_are_distinct_and_each_turns_back() {
        for side in [1, 2, 5, 37, 150] {
            let image = grid(side);
            let all = set(8).unwrap();
            let viewed: Vec<Vec<f32>> = all.iter().map(|v| v.apply(&image, side)).collect();
            for (i, (v, seen)) in all.iter().zip(&viewed).enumerate() {
                let mut back = vec![0.0; side * side];
                v.add_back(seen, side, &mut back);
                let back: Vec<f32> = back.into_iter().map(|b| b as f32).collect();
                assert_eq!(back, image, "{v:?} on {side}");
                if side > 1 {
                    assert!(!viewed[..i].contains(seen), "{v:?} repeats on {side}");
                }
            }
        }
        for count in VIEW_COUNTS {
            assert_eq!(set(count).map(<[View]>::len), Some(count));
        }
        assert_eq!(set(3), None);
    }

    #[test]
    fn combined_outputs_average_probabilities_and_maps_turned_back() {
        let views = set(4).unwrap();
        let map = grid(3);
        // The model sees each view; a map that follows the image turns with it.
        let outputs: Vec<ModelOutput> = [0.2f32, 0.4, 0.6, 0.8]
            .iter()
            .zip(views)
            .map(|(&p, v)| ModelOutput {
                probs: [1.0 - p, p],
                attention: vec![AttentionMap {
                    side: 3,
                    values: v.apply(&map, 3),
                }],
            })
            .collect();
        let mut twice = outputs.clone();
        twice.extend(outputs);
        let combined = combine(twice, views);
        assert_eq!(combined.len(), 2);
        for c in &combined {
            assert!((c.probs[1] - 0.5).abs() < 1e-7, "{:?}", c.probs);
            assert!((c.probs[0] - 0.5).abs() < 1e-7, "{:?}", c.probs);
            assert_eq!(c.attention[0].values, map);
        }
        let expanded = expand(std::slice::from_ref(&map), views, 3);
        assert_eq!(expanded.len(), 4);
        assert_eq!(expanded[0], map);
    }
}
