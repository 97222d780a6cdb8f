//! Which key each request uses: `--distribution uniform` (every key alike) or `zipf:S` (key
//! `i` is drawn with probability proportional to `1 / (i + 1)^S`, so key 0 is the hottest).
//!
//! Zipf draws use rejection-inversion (Hörmann and Derflinger, "Rejection-inversion to generate
//! variates from monotone discrete distributions", 1996): constant memory and time per draw
//! whatever the number of keys, so `--keys 100000000` needs no table.

use std::fmt;

/// Largest zipf exponent accepted: beyond it practically every draw is key 0.
pub const ZIPF_EXPONENT_MAX: f64 = 100.0;

/// A parsed `--distribution`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    Uniform,
    /// The exponent S, above 0.
    Zipf(f64),
}

impl Distribution {
    /// Parses `uniform` or `zipf:S` with 0 < S <= [`ZIPF_EXPONENT_MAX`].
    ///
    /// # Errors
    /// A one-line message for anything else.
    pub fn parse(text: &str) -> Result<Distribution, String> {
        let text = text.trim();
        if text == "uniform" {
            return Ok(Distribution::Uniform);
        }
        let Some(exponent) = text.strip_prefix("zipf:") else {
            return Err(format!("`{text}` is not uniform or zipf:S (e.g. zipf:0.99)"));
        };
        match exponent.trim().parse::<f64>() {
            Ok(exponent) if exponent > 0.0 && exponent <= ZIPF_EXPONENT_MAX => {
                Ok(Distribution::Zipf(exponent))
            }
            _ => Err(format!(
                "zipf exponent `{exponent}` must be a number above 0 and at most {ZIPF_EXPONENT_MAX}"
            )),
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distribution::Uniform => write!(formatter, "uniform"),
            Distribution::Zipf(exponent) => write!(formatter, "zipf:{exponent}"),
        }
    }
}

/// Draws key indices in `0..keys` following a [`Distribution`]. Cheap to clone: one per worker.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipf(Zipf),
}

impl KeyChooser {
    pub fn new(distribution: Distribution, keys: u64) -> KeyChooser {
        assert!(keys > 0, "at least one key");
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { keys },
            Distribution::Zipf(exponent) => KeyChooser::Zipf(Zipf::new(keys, exponent)),
        }
    }

    /// One key index in `0..keys`.
    pub fn draw(&self, random: &mut Random) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => random.below(*keys),
            KeyChooser::Zipf(zipf) => zipf.draw(random),
        }
    }
}

/// Rejection-inversion zipf sampler over ranks `1..=n`, returned as `rank - 1`.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

impl Zipf {
    pub fn new(keys: u64, exponent: f64) -> Zipf {
        assert!(keys > 0 && exponent > 0.0);
        let mut zipf = Zipf { n: keys as f64, exponent, h_integral_x1: 0.0, h_integral_n: 0.0, s: 0.0 };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_n = zipf.h_integral(zipf.n + 0.5);
        zipf.s = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        zipf
    }

    pub fn draw(&self, random: &mut Random) -> u64 {
        loop {
            let u = self.h_integral_n + random.unit() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.s || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64 - 1;
            }
        }
    }

    /// `x^-exponent`.
    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    /// The integral of `h` (up to a constant): `(x^(1-e) - 1) / (1-e)`, or `ln x` for e = 1.
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.exponent) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

/// splitmix64: fast, seedable and good enough to pick keys and ops.
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Random {
        Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (Lemire's multiply-shift; the bias is below 2^-40 for our bounds).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`, 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(chooser: &KeyChooser, keys: usize, draws: usize, seed: u64) -> Vec<u32> {
        let mut random = Random::new(seed);
        let mut counts = vec![0u32; keys];
        for _ in 0..draws {
            let key = chooser.draw(&mut random);
            assert!(key < keys as u64, "{key} out of 0..{keys}");
            counts[key as usize] += 1;
        }
        counts
    }

    #[test]
    fn parse() {
        assert_eq!(Distribution::parse("uniform"), Ok(Distribution::Uniform));
        assert_eq!(Distribution::parse("zipf:0.99"), Ok(Distribution::Zipf(0.99)));
        assert_eq!(Distribution::parse("zipf:1").unwrap().to_string(), "zipf:1");
        assert_eq!(Distribution::parse("zipf:0.99").unwrap().to_string(), "zipf:0.99");
        for bad in ["", "zipf", "zipf:", "zipf:0", "zipf:-1", "zipf:x", "zipf:NaN", "zipf:inf", "normal"] {
            assert!(Distribution::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_is_uniform_enough() {
        let mut random = Random::new(1);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[random.below(10) as usize] += 1;
        }
        assert!(counts.iter().all(|&count| (9_000..11_000).contains(&count)), "{counts:?}");
        assert!((0..1000).all(|_| (0.0..1.0).contains(&random.unit())));
    }

    #[test]
    fn uniform_covers_keys_evenly() {
        let counts = counts(&KeyChooser::new(Distribution::Uniform, 100), 100, 200_000, 7);
        // 2000 expected per key, standard deviation about 45.
        assert!(counts.iter().all(|&count| (1_700..2_300).contains(&count)), "{counts:?}");
    }

    #[test]
    fn zipf_favours_the_first_keys() {
        let draws = 200_000;
        let chooser = KeyChooser::new(Distribution::Zipf(0.99), 1000);
        let counts = counts(&chooser, 1000, draws, 42);
        assert!(counts[0] > 50 * counts[999].max(1), "key 0 {} vs key 999 {}", counts[0], counts[999]);
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[100]);
        // Compare with the exact probabilities of the first keys.
        let normaliser: f64 = (1..=1000).map(|rank| (rank as f64).powf(-0.99)).sum();
        for key in [0usize, 1, 2, 9, 99] {
            let expected = draws as f64 * ((key + 1) as f64).powf(-0.99) / normaliser;
            let observed = f64::from(counts[key]);
            assert!(
                (observed - expected).abs() < 0.1 * expected + 30.0,
                "key {key}: {observed} vs {expected}"
            );
        }
        // Same seed, same draws.
        assert_eq!(counts, super::tests::counts(&chooser, 1000, draws, 42));
    }

    #[test]
    fn zipf_edge_cases() {
        assert_eq!(counts(&KeyChooser::new(Distribution::Zipf(0.99), 1), 1, 1000, 1), [1000]);
        for exponent in [0.01, 1.0, 1.5, 3.0, ZIPF_EXPONENT_MAX] {
            let chooser = KeyChooser::new(Distribution::Zipf(exponent), 7);
            let counts = counts(&chooser, 7, 10_000, 3);
            assert!(counts[0] >= counts[6], "{exponent}: {counts:?}");
        }
        let big = KeyChooser::new(Distribution::Zipf(0.99), crate::value::KEYS_MAX);
        let mut random = Random::new(9);
        assert!((0..10_000).all(|_| big.draw(&mut random) < crate::value::KEYS_MAX));
    }
}
