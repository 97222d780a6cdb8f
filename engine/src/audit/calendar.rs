//! Calendar arithmetic for the audit log's timestamps: Unix days to civil dates (the algorithm of
//! Howard Hinnant's "chrono-compatible low-level date algorithms").

/// (year, month 1..=12, day 1..=31) of `days` since 1970-01-01 (proleptic Gregorian).
/// Hand-written rather than the `time` crate's: the audit writer formats any u64 time (past
/// year 9999 too, which `time` cannot represent), once per second per executor; the test
/// below checks it against `time` day by day over a 400-year cycle.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days end each 400-year era's years.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_agree_with_the_time_crate_over_four_centuries() {
        // Every day from 1970 to 2370 (a full 400-year cycle), against an independent calendar.
        for days in 0..146_097u64 {
            let date = time::Date::from_julian_day(2_440_588 + days as i32).unwrap();
            let expected = (date.year() as u64, u8::from(date.month()) as u64, u64::from(date.day()));
            assert_eq!(civil_from_days(days), expected, "day {days}");
        }
    }
}
