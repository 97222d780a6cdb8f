//! The operation mix: which ops the workers send and in what proportion, parsed from
//! `--mix get=90,put=10`.

use std::fmt;

/// An operation the loadgen sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Get,
    Put,
    GetMeta,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Get, Op::Put, Op::GetMeta];

    /// The name used in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::GetMeta => "get_meta",
        }
    }

    /// Position in [`Op::ALL`], for per-op arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// Relative weights of the ops; at least one is positive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Weights indexed by [`Op::index`].
    weights: [u32; 3],
    weight_total: u64,
}

impl Mix {
    /// Parses `name=weight` pairs separated by commas, e.g. `get=90,put=10`. Names not given
    /// have weight 0.
    ///
    /// # Errors
    /// A one-line message for unknown or repeated names, bad weights, or all weights 0.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; 3];
        let mut seen = [false; 3];
        for part in text.split(',').map(str::trim) {
            let Some((name, weight)) = part.split_once('=') else {
                return Err(format!("mix entry `{part}` must be name=weight, e.g. get=90"));
            };
            let op = Op::from_name(name.trim()).ok_or_else(|| {
                format!("mix names an unknown op `{}`; known: get, put, get_meta", name.trim())
            })?;
            if std::mem::replace(&mut seen[op.index()], true) {
                return Err(format!("mix names `{}` twice", op.name()));
            }
            weights[op.index()] = weight.trim().parse().map_err(|_| {
                format!("mix weight `{}` for {} is not a whole number", weight.trim(), op.name())
            })?;
        }
        let weight_total = weights.iter().map(|&weight| u64::from(weight)).sum();
        if weight_total == 0 {
            return Err("mix must give at least one op a positive weight".to_owned());
        }
        Ok(Mix { weights, weight_total })
    }

    pub fn weight_total(&self) -> u64 {
        self.weight_total
    }

    /// True if the op has a positive weight.
    pub fn includes(&self, op: Op) -> bool {
        self.weights[op.index()] > 0
    }

    /// The op for a roll in `0..weight_total()`.
    pub fn pick(&self, roll: u64) -> Op {
        debug_assert!(roll < self.weight_total);
        let mut below = 0u64;
        for op in Op::ALL {
            below += u64::from(self.weights[op.index()]);
            if roll < below {
                return op;
            }
        }
        unreachable!("roll {roll} is below the weight total {}", self.weight_total)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for op in Op::ALL.into_iter().filter(|&op| self.includes(op)) {
            let separator = if first { "" } else { "," };
            write!(formatter, "{separator}{}={}", op.name(), self.weights[op.index()])?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_pick() {
        let mix = Mix::parse("get=90, put=10").unwrap();
        assert_eq!(mix.to_string(), "get=90,put=10");
        assert_eq!(mix.weight_total(), 100);
        assert_eq!(mix.pick(0), Op::Get);
        assert_eq!(mix.pick(89), Op::Get);
        assert_eq!(mix.pick(90), Op::Put);
        assert_eq!(mix.pick(99), Op::Put);
        assert!(!mix.includes(Op::GetMeta));

        let mix = Mix::parse("get_meta=1,get=0").unwrap();
        assert_eq!(mix.to_string(), "get_meta=1");
        assert_eq!(mix.pick(0), Op::GetMeta);
    }

    #[test]
    fn bad_mixes_are_rejected() {
        for bad in ["", "get", "get=x", "get=-1", "delete=5", "get=1,get=2", "get=0,put=0"] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }
}
