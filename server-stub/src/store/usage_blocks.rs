//! The packed weekly rollup: one blob per (user, product) and block of
//! [`BLOCK_WEEKS`] weeks, so that a year's report reads a few thousand rows
//! instead of one per (user, product, week).

use crate::rules::calendar::week_start;

/// Weeks in one block: a report period (at most 400 days, 58 weeks) spans at
/// most two blocks.
pub const BLOCK_WEEKS: i32 = 64;
/// Bytes per week: usage days, paid usage days, tokens (u64 little-endian).
const CELL: usize = 10;
pub const BLOCK_BYTES: usize = BLOCK_WEEKS as usize * CELL;

/// One week of one (user, product).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeekCell {
    pub usage_days: u8,
    pub paid_days: u8,
    pub tokens: u64,
}

impl WeekCell {
    pub fn is_empty(&self) -> bool {
        *self == WeekCell::default()
    }
}

/// The week number (Monday-based, week 0 begins day 1 = 0001-01-01, a
/// Monday) of a day number.
fn week_number(day: i32) -> i32 {
    (week_start(day) - 1).div_euclid(7)
}

/// The block holding `day`'s week and the week's slot in it.
pub fn locate(day: i32) -> (i32, usize) {
    let w = week_number(day);
    (
        w.div_euclid(BLOCK_WEEKS),
        w.rem_euclid(BLOCK_WEEKS) as usize,
    )
}

/// The day number of the Monday of `slot` in `block`.
pub fn monday(block: i32, slot: usize) -> i32 {
    (block * BLOCK_WEEKS + slot as i32) * 7 + 1
}

pub fn empty() -> Vec<u8> {
    vec![0; BLOCK_BYTES]
}

/// The cell at `slot`; a short or corrupt blob reads as empty weeks.
pub fn get(blob: &[u8], slot: usize) -> WeekCell {
    match blob.get(slot * CELL..(slot + 1) * CELL) {
        Some(c) => WeekCell {
            usage_days: c[0],
            paid_days: c[1],
            tokens: u64::from_le_bytes(c[2..].try_into().expect("8 bytes")),
        },
        None => WeekCell::default(),
    }
}

/// Adds to the cell at `slot`; a refund subtracts (a week has at most 7
/// days and a refund never takes more than was added, so nothing wraps).
pub fn add(blob: &mut Vec<u8>, slot: usize, usage_days: i8, paid_days: i8, tokens: i64) {
    if blob.len() < BLOCK_BYTES {
        blob.resize(BLOCK_BYTES, 0);
    }
    let c = get(blob, slot);
    let cell = &mut blob[slot * CELL..(slot + 1) * CELL];
    cell[0] = c.usage_days.saturating_add_signed(usage_days);
    cell[1] = c.paid_days.saturating_add_signed(paid_days);
    cell[2..].copy_from_slice(&c.tokens.saturating_add_signed(tokens).to_le_bytes());
}

/// Calls `f(monday, cell)` for each non-empty week of `blob` whose Monday lies
/// in `[from, to]`.
pub fn each(blob: &[u8], block: i32, from: i32, to: i32, mut f: impl FnMut(i32, WeekCell)) {
    for slot in 0..BLOCK_WEEKS as usize {
        let m = monday(block, slot);
        if m < from || m > to {
            continue;
        }
        let c = get(blob, slot);
        if !c.is_empty() {
            f(m, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::calendar::day_number;
    use chrono::NaiveDate;

    #[test]
    fn a_day_finds_its_monday_through_its_block() {
        for d in 1..=31 {
            let day = day_number(NaiveDate::from_ymd_opt(2026, 12, d).unwrap());
            let (block, slot) = locate(day);
            assert_eq!(monday(block, slot), week_start(day));
        }
        // Blocks follow each other without a gap.
        let (b, s) = locate(monday(7, BLOCK_WEEKS as usize - 1) + 7);
        assert_eq!((b, s), (8, 0));
    }

    #[test]
    fn cells_add_up_and_other_weeks_stay_empty() {
        let mut blob = empty();
        add(&mut blob, 3, 1, 1, 7);
        add(&mut blob, 3, 1, 0, i64::from(u32::MAX) + 5);
        assert_eq!(
            get(&blob, 3),
            WeekCell {
                usage_days: 2,
                paid_days: 1,
                tokens: u64::from(u32::MAX) + 12
            }
        );
        // A refund of the paid window: its day stays, paid day and tokens go.
        add(&mut blob, 3, 0, -1, -7);
        assert_eq!(
            get(&blob, 3),
            WeekCell {
                usage_days: 2,
                paid_days: 0,
                tokens: u64::from(u32::MAX) + 5
            }
        );
        let mut seen = vec![];
        each(&blob, 0, 0, i32::MAX, |m, c| seen.push((m, c.usage_days)));
        assert_eq!(seen, vec![(monday(0, 3), 2)]);
        each(&blob, 0, monday(0, 4), i32::MAX, |_, _| {
            panic!("week 3 is before")
        });
        assert!(get(&[1, 2], 0).is_empty());
    }
}
