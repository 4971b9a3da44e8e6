//! The preprocessing stage: a cutout window to the model input, exactly as the MiraBest
//! training images were made (RECIPES, "MiraBest preprocessing"):
//!
//! 1. sigma-clipped std of the whole window, as astropy's
//!    `sigma_clipped_stats(sigma=3, maxiters=5)` in float64 (median centre, population std,
//!    keep values within centre +- 3 std, repeat until nothing changes or 5 rounds; the std
//!    of what is left), NaNs ignored;
//! 2. every pixel <= 3 std (and every NaN) set to 0;
//! 3. the central 150x150 crop (rows and columns `n/2 - 75 .. n/2 + 75`);
//! 4. min-max scaled to 0..255 in float64, converted to 8 bits the way PIL does it for the
//!    released batches (through float32, truncated, clamped);
//! 5. `(u8 / 255 - 0.5) / 0.5` in float32, as the training transforms do.
//!
//! It owns only this arithmetic, and the measurement of the emission in the model image
//! that it made (`emission`): no I/O, no knowledge of where the window came from.

pub mod emission;
mod outside;

use std::cell::RefCell;

use ndarray::{Array2, ArrayView2};

use crate::divide::Divisor;
use crate::domain::{ItemError, MODEL_PIXELS, MODEL_SIZE, Prepared};
use crate::proto::RejectReason;
use outside::Core;

/// astropy's defaults as MiraBest used them.
const CLIP_SIGMA: f64 = 3.0;
const CLIP_MAXITERS: usize = 5;
/// Pixels at or below this many clipped std are zeroed.
const THRESHOLD_SIGMA: f64 = 3.0;

thread_local! {
    /// Scratch buffers for the clipping statistics, reused so that the hot path does not
    /// allocate about 1 MB per call.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Prepares one window (normally `CUTOUT_SIZE` x `CUTOUT_SIZE`, at least `MODEL_SIZE` on
/// each side) for the model. A window with no finite pixel, whose crop has none, or whose
/// crop is constant after thresholding (nothing above 3 std, say), is an `EmptyCutout`
/// rejection.
pub fn prepare(pixels: &Array2<f32>) -> Result<Prepared, ItemError> {
    let (ny, nx) = pixels.dim();
    if ny < MODEL_SIZE || nx < MODEL_SIZE {
        return Err(ItemError::new(
            RejectReason::Unspecified,
            format!("window is {ny}x{nx}, preprocessing needs at least {MODEL_SIZE}x{MODEL_SIZE}"),
        ));
    }
    let crop = model_crop(pixels).ok_or_else(|| {
        ItemError::new(
            RejectReason::Unspecified,
            "window smaller than the model input",
        )
    })?;
    with_window(pixels, |values, scratch| {
        let mut clipped = clip(values, scratch).ok_or_else(|| {
            ItemError::new(RejectReason::EmptyCutout, "no finite pixel in the window")
        })?;
        // The std's bounds decide every crop pixel and the recorded values almost always;
        // when they do not, the exact std does.
        let (emission, mut input, any_blank) = loop {
            if let Some(kept) = keep_emission(crop, clipped.spread) {
                break kept;
            }
            #[cfg(test)]
            EXACT_FINALS.set(EXACT_FINALS.get() + 1);
            clipped.exact_std();
        };
        // No kept value is NaN or -0.0 (each is 0 or above a threshold >= 0), so the
        // extremes do not depend on the order they are taken in: eight lanes, then across.
        let (min, max) = extremes(&input);
        if max <= min {
            // Rare, so the crop is looked at again only here: blank everywhere (a window
            // whose data lie only outside the crop) is not a constant image.
            if crop.iter().all(|v| v.is_nan()) {
                return Err(ItemError::new(
                    RejectReason::EmptyCutout,
                    format!(
                        "central {MODEL_SIZE}x{MODEL_SIZE} crop has no data: every pixel is blank \
                         (NaN or off the image)"
                    ),
                ));
            }
            let threshold = THRESHOLD_SIGMA * clipped.exact_std();
            return Err(ItemError::new(
                RejectReason::EmptyCutout,
                format!(
                    "central {MODEL_SIZE}x{MODEL_SIZE} crop is constant ({min}) after zeroing pixels <= 3 std ({threshold:e})"
                ),
            ));
        }
        let range = max - min;
        let mut image_u8 = vec![0u8; MODEL_PIXELS];
        // `/ range`, by the shortcut that gives what `/` gives (a range of float32 values
        // and a dividend of 255 times a difference of two are always in its range).
        match Divisor::new(range) {
            Some(by) => scale(&mut input, &mut image_u8, min, |a| by.divide(a)),
            None => scale(&mut input, &mut image_u8, min, |a| a / range),
        }
        let std = clipped.spread.estimate;
        // Blank pixels (NaN: a window that runs off its image) where emission may go on.
        let blank: Option<Vec<bool>> = any_blank.then(|| crop.iter().map(|v| v.is_nan()).collect());
        let shape = emission::measure(&image_u8, MODEL_SIZE, blank.as_deref());
        Ok(Prepared {
            input,
            image_u8,
            emission,
            rms: std as f32,
            threshold: (THRESHOLD_SIGMA * std) as f32,
            shape,
        })
    })
}

/// Steps 4 and 5 on the kept values (`min` the least): each scaled to 0..255 and made 8
/// bits as PIL makes the float64 array (through float32, truncated toward zero, clamped),
/// then normalised in float32; `divide_by_range` divides as `/ (max - min)` does.
fn scale(input: &mut [f32], image_u8: &mut [u8], min: f64, divide_by_range: impl Fn(f64) -> f64) {
    for (value, u8) in input.iter_mut().zip(image_u8) {
        let level = pil_level(divide_by_range(255.0 * (f64::from(*value) - min)) as f32);
        *u8 = level_to_u8(level);
        *value = normalise(level);
    }
}

/// `v as u8` as a float32 (toward zero, clamped to 0..=255, NaN to 0), in vector
/// instructions, eight at a time in a loop (`as u8` is compiled one value at a time). Not
/// `clamp`: it keeps NaN, which `max` makes 0.
#[allow(clippy::manual_clamp)]
fn pil_level(v: f32) -> f32 {
    v.max(0.0).min(255.0).trunc()
}

/// A level of [`pil_level`] as the u8 it is: a whole number from 0 to 255 plus 2^23 is a
/// float32 whose low mantissa bits are that number.
fn level_to_u8(level: f32) -> u8 {
    (level + 8_388_608.0).to_bits() as u8
}

/// `(level / 255 - 0.5) / 0.5` in float32, as the training transforms normalise, for the
/// whole numbers 0 to 255: the division by 255 as a multiplication by its reciprocal and
/// a correction of the remainder (exact in a fused multiply-add), which rounds as the
/// division does (Markstein's theorem, as in `divide`; the test checks all 256 levels),
/// and the division by 0.5 as the doubling it is. A third of the division's cost, in
/// vector instructions.
fn normalise(level: f32) -> f32 {
    const RECIP: f32 = 1.0 / 255.0;
    let q = level * RECIP;
    let q = (-q).mul_add(255.0, level).mul_add(RECIP, q);
    (q - 0.5) * 2.0
}

/// Step 2 on the crop: which pixels are emission (above 3 std; NaN is not), the crop with
/// every other pixel zeroed, in the model input's own buffer (the kept values stay float32:
/// each is a pixel or 0, exact in either width), and whether any pixel is NaN. None when
/// `spread` is not exact and the exact std might decide otherwise: a pixel between the
/// thresholds of its bounds, or bounds whose std or threshold round to different float32
/// values for the record.
fn keep_emission(crop: ArrayView2<'_, f32>, spread: Spread) -> Option<(Vec<bool>, Vec<f32>, bool)> {
    let (lo, hi) = (THRESHOLD_SIGMA * spread.lo(), THRESHOLD_SIGMA * spread.hi());
    if !spread.is_exact() && (spread.lo() as f32 != spread.hi() as f32 || lo as f32 != hi as f32) {
        return None;
    }
    // The float64 comparisons as float32 ones with the same outcome for every float32
    // pixel, over slices: eight pixels to a vector instead of one at a time.
    let threshold = f32_at_or_below(THRESHOLD_SIGMA * spread.estimate);
    let (lo, hi) = (f32_at_or_above(lo), f32_at_or_below(hi));
    let mut emission = vec![false; MODEL_PIXELS];
    let mut input = vec![0.0f32; MODEL_PIXELS];
    let mut undecided = false;
    let mut blank = false;
    let rows = emission
        .chunks_exact_mut(MODEL_SIZE)
        .zip(input.chunks_exact_mut(MODEL_SIZE));
    for (row, (emission, kept)) in crop.rows().into_iter().zip(rows) {
        let owned;
        let row = match row.to_slice() {
            Some(row) => row,
            None => {
                owned = row.to_vec();
                &owned
            }
        };
        for ((&v, on), kept) in row.iter().zip(emission).zip(kept) {
            *on = v > threshold;
            *kept = if *on { v } else { 0.0 };
            undecided |= lo <= v && v <= hi;
            blank |= v.is_nan();
        }
    }
    (spread.is_exact() || !undecided).then_some((emission, input, blank))
}

/// The smallest and largest of `values` (none NaN) as float64.
fn extremes(values: &[f32]) -> (f64, f64) {
    const LANES: usize = 8;
    let (mut min, mut max) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
    let chunks = values.chunks_exact(LANES);
    for &v in chunks.remainder() {
        (min[0], max[0]) = (min[0].min(v), max[0].max(v));
    }
    for chunk in chunks {
        for lane in 0..LANES {
            min[lane] = min[lane].min(chunk[lane]);
            max[lane] = max[lane].max(chunk[lane]);
        }
    }
    (
        f64::from(min.into_iter().fold(f32::INFINITY, f32::min)),
        f64::from(max.into_iter().fold(f32::NEG_INFINITY, f32::max)),
    )
}

/// The central `MODEL_SIZE` x `MODEL_SIZE` crop of a window (rows and columns
/// `n/2 - 75 .. n/2 + 75`), the pixels the model sees; None when the window is smaller.
pub fn model_crop(pixels: &Array2<f32>) -> Option<ArrayView2<'_, f32>> {
    let (ny, nx) = pixels.dim();
    if ny < MODEL_SIZE || nx < MODEL_SIZE {
        return None;
    }
    let (y0, x0) = (ny / 2 - MODEL_SIZE / 2, nx / 2 - MODEL_SIZE / 2);
    Some(pixels.slice(ndarray::s![y0..y0 + MODEL_SIZE, x0..x0 + MODEL_SIZE]))
}

/// Step 1 alone: the sigma-clipped std of a window's finite pixels (None when there are
/// none), exactly. For tests and diagnostics ([`prepare`] mostly needs only its bounds).
pub fn sigma_clipped_std(pixels: &Array2<f32>) -> Option<f64> {
    with_window(pixels, |values, scratch| {
        clip(values, scratch).map(|mut c| c.exact_std())
    })
}

/// Step 1 as [`prepare`] first takes it: bounds that hold the exact sigma-clipped std (equal
/// when the rounds computed it exactly). For benchmarks.
pub fn sigma_clipped_bounds(pixels: &Array2<f32>) -> Option<(f64, f64)> {
    with_window(pixels, |values, scratch| {
        clip(values, scratch).map(|c| (c.spread.lo(), c.spread.hi()))
    })
}

/// Runs `f` on the window's pixels as one slice (a contiguous window, every cutout, is read
/// in place) with this thread's scratch buffers.
fn with_window<R>(pixels: &Array2<f32>, f: impl FnOnce(&[f32], &mut Scratch) -> R) -> R {
    SCRATCH.with_borrow_mut(|scratch| match pixels.as_slice() {
        Some(values) => f(values, scratch),
        None => f(&pixels.iter().copied().collect::<Vec<_>>(), scratch),
    })
}

/// A std, exact (`err` 0) or within `err` of the exact one.
#[derive(Clone, Copy, Debug)]
struct Spread {
    estimate: f64,
    err: f64,
}

impl Spread {
    fn exact(std: f64) -> Self {
        Spread {
            estimate: std,
            err: 0.0,
        }
    }

    fn is_exact(self) -> bool {
        self.err == 0.0
    }

    fn lo(self) -> f64 {
        self.estimate - self.err
    }

    fn hi(self) -> f64 {
        self.estimate + self.err
    }
}

/// The clipping's outcome: the ranks of the values kept, and their std.
struct Clipped<'s> {
    set: &'s mut Scratch,
    kept: (usize, usize),
    spread: Spread,
}

impl Clipped<'_> {
    /// The exact std of the values kept (computed once, when the bounds did not do).
    fn exact_std(&mut self) -> f64 {
        if !self.spread.is_exact() {
            let (a, b) = self.kept;
            self.spread = Spread::exact(self.set.exact_std(a, b));
        }
        self.spread.estimate
    }
}

/// astropy `sigma_clipped_stats(data, sigma=3, maxiters=5)[2]` over the finite `values`;
/// None when there are none.
///
/// Clipping only ever removes the tails of the set, so each round is a median read at the
/// middle of a range of ranks, a std over that range, and two counts for the new bounds.
/// The result is the same set arithmetic as astropy's, with the std of the sorted values
/// kept (parity on the MiraBest test set: 157 of 157 images identical). Ranks need no full
/// sort ([`Scratch::group`]): the few groups that a median or a bound falls in are sorted.
///
/// The stds come from running sums (the whole set's, less what each round clips), with an
/// error bound: where no value lies within that bound of either clipping bound, the exact
/// std would clip the same values, and the round needs no pass over its range. Otherwise
/// (rare) the round takes the exact std. So the kept values are those of exact rounds, and
/// their std is returned as bounds around the exact one, for the caller to decide with.
fn clip<'s>(values: &[f32], set: &'s mut Scratch) -> Option<Clipped<'s>> {
    let mut sums = set.group(values)?;
    let (mut a, mut b) = (0, set.keys.len());
    let spread = 'rounds: {
        for _ in 0..CLIP_MAXITERS {
            let centre = set.median(a, b);
            let mut spread = sums.spread();
            let mut bounds = spread.and_then(|s| {
                // How far the clipping bounds may lie from those of the exact std.
                let slack = CLIP_SIGMA * s.err
                    + 8.0 * f64::EPSILON * (centre.abs() + CLIP_SIGMA * s.estimate);
                set.kept((a, b), centre, s.estimate, slack)
            });
            if bounds.is_none() {
                #[cfg(test)]
                EXACT_ROUNDS.set(EXACT_ROUNDS.get() + 1);
                let exact = set.exact_std(a, b);
                spread = Some(Spread::exact(exact));
                bounds = set.kept((a, b), centre, exact, 0.0);
            }
            let (na, nb) = bounds.unwrap_or((a, b));
            if (na, nb) == (a, b) || na >= nb {
                // Converged (or nothing would be left): the std of the range kept.
                break 'rounds spread;
            }
            sums.remove(set.ranks(a, na));
            sums.remove(set.ranks(nb, b));
            (a, b) = (na, nb);
        }
        sums.spread()
    };
    let spread = match spread {
        Some(spread) => spread,
        None => Spread::exact(set.exact_std(a, b)),
    };
    Some(Clipped {
        set,
        kept: (a, b),
        spread,
    })
}

#[cfg(test)]
thread_local! {
    /// Rounds that took the exact std (the tests check that real windows need none).
    static EXACT_ROUNDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Windows whose crop needed the exact final std.
    static EXACT_FINALS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Windows whose clipping read a group of the core (see [`Core`]).
    static CORE_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The finite pixels by rank, without a full sort: one pass makes their order-preserving
/// keys, a second counts them by top digit, a third places them in groups by it (a bucket
/// sort); a group is sorted only when a rank or a bound falls in it. Clipping reads a few
/// ranks (medians) and counts below a few bounds: a few small groups near the median and
/// the bounds, and the tails it clips. So the third pass places only the groups outside
/// the window's [`Core`] (about a tenth of the keys), and the core's groups are placed only
/// if a read needs one (rare).
#[derive(Default)]
struct Scratch {
    /// The keys, grouped by top digit (ascending), each group sorted once `sorted` says so;
    /// the groups of `unplaced` are not written yet.
    keys: Vec<u32>,
    /// The keys in pixel order.
    pixel_keys: Vec<u32>,
    /// Where each group starts in `keys`, and where the last ends.
    starts: Vec<u32>,
    /// Where each group's next key goes in `keys`.
    next: Vec<u32>,
    /// The groups not placed yet: the core, until a read needs one of them.
    unplaced: Core,
    sorted: Vec<bool>,
    /// A large group's radix sort's buffer.
    sort_tmp: Vec<u32>,
    /// The positions in `pixel_keys` of the keys outside the core, listed for placing.
    listed: Vec<u32>,
    /// A range's values as float64, for an exact std.
    values: Vec<f64>,
}

impl Scratch {
    /// Groups the keys of the finite `values`; returns their sums (None when there are none).
    fn group(&mut self, values: &[f32]) -> Option<RunningSums> {
        // The keys written through a plain slice (a `Vec::push` per key reloads and
        // stores the vector's header each time), in pixel order.
        let pixel_keys = overwritable(&mut self.pixel_keys, values.len());
        let mut n = 0;
        // A vector at a time where all its values are finite (nearly everywhere): no
        // branch per value, so the compiler vectorises the keys. They are written, then
        // kept when all were finite, a test without an early exit (`all` has one, and kept
        // the test from vectorising: the clipping took 30% longer with it).
        let chunks = values.chunks_exact(VECTOR);
        let rest = chunks.remainder();
        for chunk in chunks {
            let mut finite = true;
            for (slot, &v) in pixel_keys[n..n + VECTOR].iter_mut().zip(chunk) {
                *slot = finite_key(v);
                finite &= v.is_finite();
            }
            n = if finite {
                n + VECTOR
            } else {
                keys_of(chunk, pixel_keys, n)
            };
        }
        n = keys_of(rest, pixel_keys, n);
        // One count table per key position modulo `LANES`: neighbouring pixels mostly
        // share a group, and their increments would otherwise wait on each other.
        let mut counts = [[0u32; TOP_GROUPS]; LANES];
        let chunks = pixel_keys[..n].chunks_exact(LANES);
        for &k in chunks.remainder() {
            counts[0][top_digit(k)] += 1;
        }
        for chunk in chunks {
            for (lane, &k) in chunk.iter().enumerate() {
                counts[lane][top_digit(k)] += 1;
            }
        }
        self.starts.clear();
        self.starts.push(0);
        self.next.clear();
        let mut sum = 0;
        for d in 0..TOP_GROUPS {
            self.next.push(sum);
            sum += counts.iter().map(|c| c[d]).sum::<u32>();
            self.starts.push(sum);
        }
        self.keys.resize(n, 0);
        self.sorted.clear();
        self.sorted.resize(TOP_GROUPS, false);
        let core = Core::of(|rank| self.group_of(rank), n);
        self.unplaced = core;
        if n == 0 {
            return None;
        }
        // The sums of the first round, shifted against cancellation by a value of the
        // median's group: within a half octave of the median.
        let low_key = (self.group_of(n / 2) as u32) << GROUP_SHIFT;
        let sums = sums_of(&self.pixel_keys[..n], f64::from(from_key(low_key)));
        // The keys outside the core (about a tenth) are listed, then placed.
        for &i in outside::list(&self.pixel_keys[..n], core, &mut self.listed) {
            place(&mut self.keys, &mut self.next, self.pixel_keys[i as usize]);
        }
        Some(sums)
    }

    /// Places the core's groups (all at once: a read of one is rare).
    fn place_core(&mut self) {
        let core = std::mem::take(&mut self.unplaced);
        if core.is_empty() {
            return;
        }
        #[cfg(test)]
        CORE_READS.set(CORE_READS.get() + 1);
        for &k in &self.pixel_keys[..self.keys.len()] {
            if core.holds(top_digit(k)) {
                place(&mut self.keys, &mut self.next, k);
            }
        }
    }

    /// The keys of ranks `a..b`, each group among them placed (not sorted).
    fn ranks(&mut self, a: usize, b: usize) -> &[u32] {
        if a < b && (self.group_of(a)..=self.group_of(b - 1)).any(|d| self.unplaced.holds(d)) {
            self.place_core();
        }
        &self.keys[a..b]
    }

    /// The group that holds `rank` (< the number of keys).
    fn group_of(&self, rank: usize) -> usize {
        self.starts.partition_point(|&s| s as usize <= rank) - 1
    }

    fn sort_group(&mut self, d: usize) {
        if !self.sorted[d] {
            if self.unplaced.holds(d) {
                self.place_core();
            }
            let (start, end) = (self.starts[d] as usize, self.starts[d + 1] as usize);
            sort_lower_digits(&mut self.keys[start..end], &mut self.sort_tmp);
            self.sorted[d] = true;
        }
    }

    /// The value of rank `rank`.
    fn select(&mut self, rank: usize) -> f64 {
        self.sort_group(self.group_of(rank));
        f64::from(from_key(self.keys[rank]))
    }

    /// numpy's median of the values of ranks `a..b` (not empty): the middle one, or the
    /// mean of the two middle ones.
    fn median(&mut self, a: usize, b: usize) -> f64 {
        let mid = a + (b - a) / 2;
        if (b - a) % 2 == 1 {
            self.select(mid)
        } else {
            (self.select(mid - 1) + self.select(mid)) / 2.0
        }
    }

    /// How many keys are below `bound` (a key, or above every key).
    fn count_below(&mut self, bound: u64) -> usize {
        let Ok(bound) = u32::try_from(bound) else {
            return self.keys.len();
        };
        let d = top_digit(bound);
        self.sort_group(d);
        let (start, end) = (self.starts[d] as usize, self.starts[d + 1] as usize);
        start + self.keys[start..end].partition_point(|&k| k < bound)
    }

    /// The ranks in `a..b` whose values lie within `centre +- 3 spread`, for a spread that
    /// may lie `slack` from the exact one; None when a value lies within that of a bound.
    fn kept(
        &mut self,
        (a, b): (usize, usize),
        centre: f64,
        spread: f64,
        slack: f64,
    ) -> Option<(usize, usize)> {
        let (lo, hi) = (centre - CLIP_SIGMA * spread, centre + CLIP_SIGMA * spread);
        let mut rank = |bound: u64| self.count_below(bound).clamp(a, b);
        let first = rank(key_at_or_above(lo - slack));
        let end = rank(key_above(hi - slack));
        (first == rank(key_at_or_above(lo + slack)) && end == rank(key_above(hi + slack)))
            .then_some((first, end))
    }

    /// The std of the values of ranks `a..b` (not empty), summed in sorted order.
    fn exact_std(&mut self, a: usize, b: usize) -> f64 {
        for d in self.group_of(a)..=self.group_of(b - 1) {
            self.sort_group(d);
        }
        self.values.clear();
        self.values
            .extend(self.keys[a..b].iter().map(|&k| f64::from(from_key(k))));
        population_std(&self.values)
    }
}

/// Puts `key` in its group's next slot.
fn place(keys: &mut [u32], next: &mut [u32], key: u32) {
    let d = top_digit(key);
    keys[next[d] as usize] = key;
    next[d] += 1;
}

/// The key of a finite value; -0.0 becomes 0.0 (an equal value, so one key for both).
fn finite_key(v: f32) -> u32 {
    sort_key(v + 0.0)
}

/// Writes the keys of the finite `values` to `keys` from `n` on; returns where they end.
fn keys_of(values: &[f32], keys: &mut [u32], mut n: usize) -> usize {
    for &v in values {
        if v.is_finite() {
            keys[n] = finite_key(v);
            n += 1;
        }
    }
    n
}

/// The smallest key whose value is at least `x`: the values below `x` have the keys below it.
fn key_at_or_above(x: f64) -> u64 {
    let y = x as f32 + 0.0;
    let k = u64::from(sort_key(y));
    if f64::from(y) >= x { k } else { k + 1 }
}

/// The smallest key whose value is above `x`: the values up to `x` have the keys below it.
fn key_above(x: f64) -> u64 {
    let y = x as f32 + 0.0;
    let k = u64::from(sort_key(y));
    if f64::from(y) > x { k } else { k + 1 }
}

/// The smallest float32 at or above `x` (finite): for any float32 `v`, `x <= v` exactly
/// when this `<= v`.
fn f32_at_or_above(x: f64) -> f32 {
    from_key(key_at_or_above(x) as u32)
}

/// The largest float32 at or below `x` (finite): for any float32 `v`, `v <= x` exactly when
/// `v <=` this, and `v > x` exactly when `v >` this.
fn f32_at_or_below(x: f64) -> f32 {
    // The key below `key_above`'s, past -0.0's (which no pixel has: its keys are those of
    // 0.0): the largest float32 below 0.0 is the negative subnormal.
    let below = key_above(x) as u32 - 1;
    from_key(below - u32::from(below == sort_key(-0.0)))
}

/// Sums of a range's values (shifted, against cancellation), kept as the whole set's sums
/// less the tails clipped so far, with what bounds their rounding error.
struct RunningSums {
    shift: f64,
    n: f64,
    s1: f64,
    s2: f64,
    /// Error bounds of `s1` and `s2`: every term ever added or removed counts once.
    abs1: f64,
    abs2: f64,
    terms: f64,
}

impl RunningSums {
    fn remove(&mut self, keys: &[u32]) {
        for &k in keys {
            let y = f64::from(from_key(k)) - self.shift;
            self.s1 -= y;
            self.s2 -= y * y;
        }
        self.n -= keys.len() as f64;
        self.terms += keys.len() as f64;
    }

    /// The population std of the range, within a bound of the exact two-pass std (None
    /// when the bound is not small against the std: the caller then takes the exact std).
    fn spread(&self) -> Option<Spread> {
        const U: f64 = f64::EPSILON;
        // Each sum's rounding error: at most (terms + 2) u times the sum of the absolute
        // values of its terms (sequential summation), doubled for the shift and squares.
        let e1 = 2.0 * (self.terms + 2.0) * U * self.abs1;
        let e2 = 2.0 * (self.terms + 2.0) * U * self.abs2;
        let mean = self.s1 / self.n;
        let var = self.s2 / self.n - mean * mean;
        let var_err = e2 / self.n
            + 2.0 * mean.abs() * e1 / self.n
            + (e1 / self.n).powi(2)
            // The last operations here, and the exact two-pass std's own error.
            + 64.0 * U * (self.s2.abs() / self.n + mean * mean)
            // The exact std's mean of unshifted values is off by up to this much.
            + (64.0 * U * (self.shift.abs() + mean.abs())).powi(2);
        if var.is_nan() || var <= 16.0 * var_err {
            return None;
        }
        let estimate = var.sqrt();
        // |sqrt(x) - sqrt(y)| <= |x - y| / sqrt(min(x, y)), and min >= var - var_err; then
        // the rounding of both square roots, and of the bounds made from this one.
        let err = var_err / (var - var_err).sqrt() + 8.0 * U * estimate;
        Some(Spread { estimate, err })
    }
}

/// Independent chains of the group counts, so that no update waits for the one before.
const LANES: usize = 4;

/// Float32 values to a loop that the compiler vectorises: eight fill an AVX2 register.
const VECTOR: usize = 8;

/// The sums of the values of `keys` less `shift` (the error bound of [`RunningSums`] holds
/// for any order of summation).
fn sums_of(keys: &[u32], shift: f64) -> RunningSums {
    let (mut s1, mut s2) = vector_sums(keys, shift);
    for &key in keys.chunks_exact(VECTOR).remainder() {
        let y = f64::from(from_key(key)) - shift;
        s1[0] += y;
        s2[0] += y * y;
    }
    let total = |p: [f64; VECTOR]| p.iter().sum::<f64>();
    let (n, s2) = (keys.len() as f64, total(s2));
    RunningSums {
        shift,
        n,
        s1: total(s1),
        s2,
        // The sum of |y| is at most sqrt(n sum y^2) (Cauchy-Schwarz), here with room for
        // the rounding of `s2` and of this.
        abs1: (n * s2).sqrt() * (1.0 + 1e-9),
        abs2: s2,
        terms: n,
    }
}

/// The sums of [`sums_of`] over the whole vectors of `keys`, one lane to a position: two
/// AVX2 vectors of float64 each. A function of its own, not inlined, with the lanes
/// returned as they are: in the caller's body, or with the lanes totalled here, the
/// compiler vectorised the other way (each value's two terms together) or only in part,
/// and criterion's sigma clipping took 7-10% longer.
#[inline(never)]
fn vector_sums(keys: &[u32], shift: f64) -> ([f64; VECTOR], [f64; VECTOR]) {
    let (mut s1, mut s2) = ([0.0f64; VECTOR], [0.0f64; VECTOR]);
    for vector in keys.chunks_exact(VECTOR) {
        for (lane, &key) in vector.iter().enumerate() {
            let y = f64::from(from_key(key)) - shift;
            s1[lane] += y;
            s2[lane] += y * y;
        }
    }
    (s1, s2)
}

/// A u32 whose unsigned order is the numeric order of finite floats.
fn sort_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn from_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// Radix digits: 11, 11 and 10 bits. The top one (sign, exponent and one mantissa bit: a
/// half octave of values) groups the keys; the two lower ones sort a large group.
const RADIX_BITS: u32 = 11;
const RADIX_BUCKETS: usize = 1 << RADIX_BITS;
const TOP_PASS: usize = 2;
/// A key's top digit is the key shifted by this much.
const GROUP_SHIFT: usize = RADIX_BITS as usize * TOP_PASS;
/// Groups: the values of the top digit (10 bits).
const TOP_GROUPS: usize = 1 << (32 - GROUP_SHIFT);

fn radix_digit(key: u32, pass: usize) -> usize {
    ((key >> (RADIX_BITS as usize * pass)) as usize) & (RADIX_BUCKETS - 1)
}

fn top_digit(key: u32) -> usize {
    radix_digit(key, TOP_PASS)
}

/// Sorts keys that share their top digit: a comparison sort for a few, else an LSD radix
/// sort on the two lower digits (a pass where every key has the same digit is skipped).
fn sort_lower_digits(keys: &mut [u32], tmp: &mut Vec<u32>) {
    const SMALL: usize = 512;
    if keys.len() <= SMALL {
        keys.sort_unstable();
        return;
    }
    let tmp = overwritable(tmp, keys.len());
    for pass in 0..TOP_PASS {
        let mut next = [0u32; RADIX_BUCKETS];
        for &k in keys.iter() {
            next[radix_digit(k, pass)] += 1;
        }
        if next.iter().any(|&c| c as usize == keys.len()) {
            continue;
        }
        let mut sum = 0;
        for slot in &mut next {
            (*slot, sum) = (sum, sum + *slot);
        }
        for &k in keys.iter() {
            let bucket = radix_digit(k, pass);
            tmp[next[bucket] as usize] = k;
            next[bucket] += 1;
        }
        keys.copy_from_slice(tmp);
    }
}

/// The first `len` elements of a reused buffer, for the caller to overwrite; it grows
/// (zeroed) only when shorter, so that it is not cleared call after call.
fn overwritable(buf: &mut Vec<u32>, len: usize) -> &mut [u32] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// Population standard deviation (ddof 0) with numpy's two-pass formula and pairwise sums.
fn population_std(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = pairwise_sum(values, |v| v) / n;
    (pairwise_sum(values, |v| (v - mean) * (v - mean)) / n).sqrt()
}

/// Pairwise summation as numpy does it (blocks of 128 summed with 8 accumulators): the
/// same rounding behaviour, and accurate for 90 000 terms.
fn pairwise_sum(values: &[f64], f: impl Fn(f64) -> f64 + Copy) -> f64 {
    const BLOCK: usize = 128;
    if values.len() < 8 {
        return values.iter().fold(0.0, |s, &v| s + f(v));
    }
    if values.len() <= BLOCK {
        let mut acc = [0.0f64; 8];
        let chunks = values.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f(v);
            }
        }
        let mut s =
            ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for &v in rest {
            s += f(v);
        }
        return s;
    }
    let half = (values.len() / 2) / 8 * 8;
    pairwise_sum(&values[..half], f) + pairwise_sum(&values[half..], f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CUTOUT_SIZE;

    /// A deterministic 300x300 window: a ramp of noise-like values in [-0.5, 0.5], a few
    /// strong outliers and NaNs, and a bright "source" in the centre. The same formula in
    /// Python gives astropy's clipped std below.
    fn synthetic() -> Array2<f32> {
        Array2::from_shape_fn((CUTOUT_SIZE, CUTOUT_SIZE), |(y, x)| {
            let noise = (((x * 31 + y * 17) % 101) as f64 / 100.0 - 0.5) as f32;
            if (x * 7 + y * 13) % 997 == 0 {
                f32::NAN
            } else if (140..160).contains(&x) && (145..155).contains(&y) {
                5.0 + (x - 140) as f32 * 0.25
            } else if (x + y * 3) % 1009 == 0 {
                40.0
            } else {
                noise
            }
        })
    }

    #[test]
    fn clipped_std_matches_astropy() {
        // numpy/astropy:
        //   y, x = np.mgrid[0:300, 0:300]
        //   a = (((x*31 + y*17) % 101) / 100 - 0.5).astype(np.float32)
        //   a[(x + y*3) % 1009 == 0] = 40; a[145:155, 140:160] = 5 + (x[145:155, 140:160] - 140) * 0.25
        //   a[(x*7 + y*13) % 997 == 0] = np.nan
        //   sigma_clipped_stats(a.astype(np.float64), sigma=3, maxiters=5)[2]
        let std = sigma_clipped_std(&synthetic()).expect("finite values");
        assert!(
            (std - ASTROPY_STD).abs() < 1e-12,
            "{std} vs astropy {ASTROPY_STD}"
        );
    }
    const ASTROPY_STD: f64 = 0.2915404253795988;

    #[test]
    fn ranks_median_and_std_follow_numpy() {
        // Many values in one group (sorted by radix), few in others (comparison sort).
        let values: Vec<f32> = (0..5000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) % 20011) as f32 - 10005.0) * 1.7e-3)
            .chain([-0.0, 0.0, 1e-30, -1e30, f32::NAN, f32::INFINITY])
            .chain((0..3000u32).map(|i| 1.0 + (i.wrapping_mul(40_503) % 3001) as f32 * 1e-4))
            .collect();
        let mut expected: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
        expected.sort_by(f32::total_cmp);
        let expected: Vec<f64> = expected.into_iter().map(|v| f64::from(v + 0.0)).collect();
        let mut set = Scratch::default();
        assert!(set.group(&values).is_some());
        assert_eq!(set.keys.len(), expected.len());
        // Ranks read in an order that sorts groups one by one.
        for rank in (0..expected.len())
            .rev()
            .step_by(7)
            .chain(0..expected.len())
        {
            assert_eq!(
                set.select(rank).to_bits(),
                expected[rank].to_bits(),
                "rank {rank}"
            );
        }
        for x in [-1e31, -1.0, -0.0, 0.0, 1e-30, 1.0, 1.0001, 1.2, 3.0, 1e31] {
            let below = expected.iter().filter(|&&v| v < x).count();
            let up_to = expected.iter().filter(|&&v| v <= x).count();
            assert_eq!(set.count_below(key_at_or_above(x)), below, "< {x}");
            assert_eq!(set.count_below(key_above(x)), up_to, "<= {x}");
        }
        assert_eq!(set.median(0, 3), expected[1]);
        assert_eq!(set.median(0, 4), (expected[1] + expected[2]) / 2.0);
        assert_eq!(
            set.exact_std(0, expected.len()).to_bits(),
            population_std(&expected).to_bits()
        );
        let v: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        let naive_mean = v.iter().sum::<f64>() / 1000.0;
        let naive = (v.iter().map(|x| (x - naive_mean).powi(2)).sum::<f64>() / 1000.0).sqrt();
        assert!((population_std(&v) - naive).abs() < 1e-14);
        assert_eq!(pairwise_sum(&[1.0; 1001], |x| x), 1001.0);
    }

    /// numpy's median of sorted values: the middle one, or the mean of the two middle ones.
    fn sorted_median(sorted: &[f64]) -> f64 {
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        }
    }

    /// The clipping as first written: a comparison sort, then the same rounds. The grouped
    /// ranks and the running sums must give the same bits on real and synthetic windows.
    fn reference_clipped_std(pixels: &Array2<f32>) -> Option<f64> {
        let mut sorted: Vec<f32> = pixels.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f32::total_cmp);
        let sorted: Vec<f64> = sorted.into_iter().map(f64::from).collect();
        let (mut a, mut b) = (0, sorted.len());
        for _ in 0..CLIP_MAXITERS {
            let range = &sorted[a..b];
            let (centre, spread) = (sorted_median(range), population_std(range));
            let (lo, hi) = (centre - CLIP_SIGMA * spread, centre + CLIP_SIGMA * spread);
            let kept: Vec<usize> = (a..b)
                .filter(|&i| sorted[i] >= lo && sorted[i] <= hi)
                .collect();
            let (na, nb) = match (kept.first(), kept.last()) {
                (Some(&f), Some(&l)) => (f, l + 1),
                _ => break,
            };
            if (na, nb) == (a, b) {
                break;
            }
            (a, b) = (na, nb);
        }
        Some(population_std(&sorted[a..b]))
    }

    #[test]
    fn levels_are_as_u8() {
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 256.0];
        let spread = (0..u32::MAX).step_by(997).map(f32::from_bits);
        let near = (0..300 * 64).map(|i| i as f32 / 64.0 - 20.0);
        for v in special.into_iter().chain(spread).chain(near) {
            let level = pil_level(v);
            assert_eq!(level_to_u8(level), v as u8, "{v:e}");
            // Equal as numbers: -0.0 may stay -0.0 (`max` of two zeros is either), which
            // scales to the same level, 0.
            assert_eq!(level, f32::from(v as u8), "{v:e}");
            let normalised = (f32::from(v as u8) / 255.0 - 0.5) / 0.5;
            assert_eq!(normalise(level).to_bits(), normalised.to_bits(), "{v:e}");
        }
    }

    #[test]
    fn every_level_normalises_as_the_division_does() {
        for u in 0..=255u8 {
            let want = (f32::from(u) / 255.0 - 0.5) / 0.5;
            assert_eq!(normalise(f32::from(u)).to_bits(), want.to_bits(), "{u}");
        }
    }

    #[test]
    fn float32_thresholds_compare_as_their_float64_ones() {
        let xs = [0.0, 1e-45, 3e-4, 1.0 / 3.0, 0.1, 255.0, 1e30, 1e-300];
        for x in xs.into_iter().flat_map(|x| [x, -x]) {
            let (up, down) = (f32_at_or_above(x), f32_at_or_below(x));
            let k = sort_key(x as f32);
            let around = [k - 1, k, k + 1].map(from_key);
            for v in around.into_iter().chain([up, down, 0.0, -0.0]) {
                let v64 = f64::from(v);
                assert_eq!(x <= v64, up <= v, "{x:e} <= {v:e}");
                assert_eq!(v64 <= x, v <= down, "{v:e} <= {x:e}");
                assert_eq!(v64 > x, v > down, "{v:e} > {x:e}");
            }
        }
    }

    #[test]
    fn clipping_is_identical_to_the_reference_on_real_and_synthetic_windows() {
        let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/first");
        let cutter = crate::cutout::Cutter::new(&crate::config::CutoutConfig {
            mosaics: Vec::new(),
            workers: 1,
            ..crate::config::CutoutConfig::default()
        })
        .expect("cutter");
        let detections = crate::source::open(&crate::config::SourceConfig::Files {
            inputs: vec![samples],
            survey: "FIRST".into(),
        })
        .expect("samples");
        let mut windows: Vec<Array2<f32>> = detections
            .flatten()
            .map(|d| cutter.cut(&d.message).expect("sample cuts").pixels)
            .collect();
        assert_eq!(windows.len(), 20);
        windows.push(synthetic());
        // Heavy tails, negative values, both zeros, many equal values, tiny and huge scales.
        for seed in 0..12u64 {
            windows.push(Array2::from_shape_fn(
                (CUTOUT_SIZE, CUTOUT_SIZE),
                |(y, x)| {
                    let i = (y * CUTOUT_SIZE + x) as u64 ^ (seed << 20);
                    let u =
                        (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1u64 << 24) as f32;
                    let scale = 10f32.powi(seed as i32 - 6);
                    match i % 97 {
                        0 => -0.0,
                        1 => 0.0,
                        2 if seed % 2 == 0 => f32::NAN,
                        3 => 50.0 * scale,
                        4 => (u * 8.0).round() * scale,
                        _ => (u - 0.5) * scale * (1.0 + 20.0 * u.powi(9)),
                    }
                },
            ));
        }
        EXACT_ROUNDS.set(0);
        EXACT_FINALS.set(0);
        let mut prepares_that_read_the_core = Vec::new();
        for (k, window) in windows.iter().enumerate() {
            let theirs = reference_clipped_std(window);
            let ours = sigma_clipped_std(window).map(f64::to_bits);
            assert_eq!(ours, theirs.map(f64::to_bits), "window {k}");
            // What `prepare` makes from the std's bounds is what the exact std makes.
            let std = theirs.expect("finite pixels");
            let threshold = THRESHOLD_SIGMA * std;
            CORE_READS.set(0);
            let prepared = prepare(window);
            if CORE_READS.get() > 0 {
                prepares_that_read_the_core.push(k);
            }
            match prepared {
                Ok(p) => {
                    assert_eq!((p.rms, p.threshold), (std as f32, threshold as f32));
                    let crop = model_crop(window).expect("crop");
                    assert!(
                        crop.iter()
                            .zip(&p.emission)
                            .all(|(&v, &on)| on == (f64::from(v) > threshold)),
                        "window {k}"
                    );
                }
                Err(e) => assert!(e.detail.ends_with(&format!("({threshold:e})")), "{e:?}"),
            }
            if k == 19 {
                // The real windows: their crops were decided by the bounds alone, and their
                // clipping read no group of the core.
                assert_eq!(EXACT_FINALS.get(), 0);
                assert_eq!(prepares_that_read_the_core, [0usize; 0]);
            }
        }
        // Synthetic windows whose core was misjudged took the placing of the rest.
        assert!(prepares_that_read_the_core.len() > 3);
        // The rounds before the last took their bounds from the running sums.
        assert_eq!(EXACT_ROUNDS.get(), 0);
    }

    #[test]
    fn bounds_that_could_decide_otherwise_are_refused() {
        let crop = Array2::from_shape_fn((MODEL_SIZE, MODEL_SIZE), |(y, x)| {
            if (y, x) == (3, 4) { 3.0 } else { 0.5 }
        });
        let inexact = Spread {
            estimate: 1.0,
            err: 1e-9,
        };
        // A pixel between the bounds' thresholds (2.999999997 .. 3.000000003).
        assert!(keep_emission(crop.view(), inexact).is_none());
        // The exact std decides it (3.0 is not above 3 x 1.0).
        let (emission, kept, blank) =
            keep_emission(crop.view(), Spread::exact(1.0)).expect("exact");
        assert!(!blank);
        assert!(!emission.iter().any(|&on| on) && kept.iter().all(|&v| v == 0.0));
        // Nothing between the bounds' thresholds: decided, as the exact std would.
        let (emission, ..) = keep_emission(
            crop.view(),
            Spread {
                estimate: 0.9,
                err: 1e-9,
            },
        )
        .expect("decided");
        assert_eq!(emission.iter().filter(|&&on| on).count(), 1);
        // Bounds on either side of a float32 rounding boundary: the recorded std is unknown.
        let midpoint = 1.0 + f64::from(f32::EPSILON) / 2.0;
        let straddling = Spread {
            estimate: midpoint,
            err: 1e-12,
        };
        assert!(keep_emission(crop.view(), straddling).is_none());
    }

    #[test]
    fn a_value_on_a_clipping_bound_takes_the_exact_std() {
        // 16 zeros and -a, +a: mean 0, std a/3, so -a and +a lie on centre -+ 3 std, where
        // the running sums' error bound cannot tell whether they are kept.
        for a in [1.0f32, 0.3, 7e-5] {
            let mut values = vec![0.0f32; 16];
            values.extend([-a, a]);
            let window = Array2::from_shape_vec((1, values.len()), values).expect("shape");
            EXACT_ROUNDS.set(0);
            let ours = sigma_clipped_std(&window).map(f64::to_bits);
            assert_eq!(
                ours,
                reference_clipped_std(&window).map(f64::to_bits),
                "a = {a}"
            );
            assert!(EXACT_ROUNDS.get() > 0, "a = {a}");
        }
    }

    #[test]
    fn prepared_image_is_scaled_thresholded_and_normalised() {
        let window = synthetic();
        let p = prepare(&window).expect("prepared");
        let n = MODEL_PIXELS;
        assert_eq!(
            (p.input.len(), p.image_u8.len(), p.emission.len()),
            (n, n, n)
        );
        assert!((f64::from(p.threshold) - 3.0 * f64::from(p.rms)).abs() < 1e-6);
        // Crop rows/cols 75..225: the source block starts at crop (70, 65); it holds the
        // max (255) at its right edge; noise is below threshold, zeroed, the min (0).
        let at = |y: usize, x: usize| y * MODEL_SIZE + x;
        assert_eq!(p.image_u8[at(145 - 75, 159 - 75)], 255);
        assert_eq!(p.image_u8[at(0, 0)], 0);
        assert!(p.emission[at(70, 65)] && !p.emission[at(0, 0)]);
        // No 40.0 outlier falls in the crop, so the max is the source's 9.75 and its 5.0
        // pixel becomes trunc(255 * 5 / 9.75) = trunc(130.77) = 130.
        assert!(!(75..225).any(|y| (75..225).any(|x| window[[y, x]] == 40.0)));
        assert_eq!(p.image_u8[at(70, 65)], 130);
        for (&u, &v) in p.image_u8.iter().zip(&p.input) {
            assert_eq!(v, (f32::from(u) / 255.0 - 0.5) / 0.5);
        }
        assert_eq!(p.input.iter().copied().fold(f32::INFINITY, f32::min), -1.0);
        assert_eq!(
            p.input.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            1.0
        );
    }

    #[test]
    fn emission_that_runs_off_the_image_is_truncated() {
        // The synthetic source is whole (its window's scattered NaNs are bad pixels inside
        // the image); with the window blank from its right edge on, as where a window runs
        // off its image, it is cut off.
        let whole = prepare(&synthetic()).expect("prepared");
        assert_eq!(whole.shape.islands, 1);
        assert!(!whole.shape.truncated);
        let mut cut = synthetic();
        cut.slice_mut(ndarray::s![.., 160..]).fill(f32::NAN);
        let p = prepare(&cut).expect("prepared");
        assert_eq!(p.shape.islands, 1);
        assert!(p.shape.truncated);
    }

    #[test]
    fn blank_and_constant_windows_are_rejected() {
        let nan = Array2::from_elem((CUTOUT_SIZE, CUTOUT_SIZE), f32::NAN);
        assert_eq!(
            prepare(&nan).expect_err("all NaN").reason,
            RejectReason::EmptyCutout
        );
        let flat = Array2::from_elem((CUTOUT_SIZE, CUTOUT_SIZE), 1.5f32);
        assert_eq!(
            prepare(&flat).expect_err("constant").reason,
            RejectReason::EmptyCutout
        );
        // Only noise: nothing in the crop above 3 std, so the crop is all zeros.
        let noise = Array2::from_shape_fn((CUTOUT_SIZE, CUTOUT_SIZE), |(y, x)| {
            ((x * 31 + y * 17) % 101) as f32 - 50.0
        });
        assert_eq!(
            prepare(&noise).expect_err("no emission").reason,
            RejectReason::EmptyCutout
        );
        let small = Array2::from_elem((100, 300), 1.0f32);
        assert!(prepare(&small).is_err());
        // Data only outside the central crop: said so, not "constant".
        let mut ring = noise.clone();
        let (a, b) = (
            CUTOUT_SIZE / 2 - MODEL_SIZE / 2,
            CUTOUT_SIZE / 2 + MODEL_SIZE / 2,
        );
        ring.slice_mut(ndarray::s![a..b, a..b]).fill(f32::NAN);
        let e = prepare(&ring).expect_err("blank crop");
        assert_eq!(e.reason, RejectReason::EmptyCutout);
        assert_eq!(
            e.detail,
            "central 150x150 crop has no data: every pixel is blank (NaN or off the image)"
        );
        let e = prepare(&noise).expect_err("no emission");
        assert!(e.detail.contains("crop is constant (0)"), "{}", e.detail);
    }
}
