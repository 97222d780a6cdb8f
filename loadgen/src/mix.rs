//! The operation mix: which ops the workers send and in what proportion, parsed from
//! `--mix get=90,put=10`. `batch_get:N=W` sends one BATCH_GET of N keys with weight W.

use std::fmt;

use credshard_protocol::op::batch_get::BATCH_IDS_MAX;

/// An operation the loadgen sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Get,
    Put,
    GetMeta,
    Rotate,
    Delete,
    BatchGet,
}

/// The default (and smallest) ids in one `batch_get`.
pub const BATCH_SIZE_DEFAULT: usize = 10;

impl Op {
    /// How many ops there are, for per-op arrays.
    pub const COUNT: usize = 6;
    pub const ALL: [Op; Op::COUNT] = [Op::Get, Op::Put, Op::GetMeta, Op::Rotate, Op::Delete, Op::BatchGet];

    /// The name used in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::GetMeta => "get_meta",
            Op::Rotate => "rotate",
            Op::Delete => "delete",
            Op::BatchGet => "batch_get",
        }
    }

    /// True for the ops only a credshard target has.
    pub fn credshard_only(self) -> bool {
        !matches!(self, Op::Get | Op::Put)
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
    weights: [u32; Op::COUNT],
    weight_total: u64,
    /// Ids in each `batch_get` (1..=[`BATCH_IDS_MAX`]).
    batch_size: usize,
}

impl Mix {
    /// Parses `name=weight` pairs separated by commas, e.g. `get=90,put=10`. Names not given
    /// have weight 0. `batch_get:N=W` sets the batch size N (1..=1000; `batch_get=W` is
    /// `batch_get:10=W`).
    ///
    /// # Errors
    /// A one-line message for unknown or repeated names, bad weights, or all weights 0.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; Op::COUNT];
        let mut seen = [false; Op::COUNT];
        let mut batch_size = BATCH_SIZE_DEFAULT;
        for part in text.split(',').map(str::trim) {
            let Some((name, weight)) = part.split_once('=') else {
                return Err(format!("mix entry `{part}` must be name=weight, e.g. get=90"));
            };
            let (name, size) = match name.trim().split_once(':') {
                Some((name, size)) => (name.trim(), Some(size.trim())),
                None => (name.trim(), None),
            };
            let op = Op::from_name(name).ok_or_else(|| {
                format!(
                    "mix names an unknown op `{name}`; known: get, put, get_meta, rotate, delete, batch_get:N"
                )
            })?;
            match (op, size) {
                (Op::BatchGet, Some(size)) => {
                    batch_size =
                        size.parse().ok().filter(|size| (1..=BATCH_IDS_MAX).contains(size)).ok_or_else(
                            || format!("batch_get:{size} needs a size from 1 to {BATCH_IDS_MAX}"),
                        )?;
                }
                (_, Some(_)) => return Err(format!("only batch_get takes a size (`{name}:...`)")),
                (_, None) => {}
            }
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
        Ok(Mix { weights, weight_total, batch_size })
    }

    /// Ids in each `batch_get`.
    pub fn batch_size(&self) -> usize {
        self.batch_size
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
            let size = if op == Op::BatchGet { format!(":{}", self.batch_size) } else { String::new() };
            write!(formatter, "{separator}{}{size}={}", op.name(), self.weights[op.index()])?;
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

        let mix = Mix::parse("get=70,put=10,rotate=10,batch_get:25=5,delete=5").unwrap();
        assert_eq!(mix.to_string(), "get=70,put=10,rotate=10,delete=5,batch_get:25=5");
        assert_eq!(mix.batch_size(), 25);
        assert_eq!((mix.pick(80), mix.pick(90), mix.pick(95)), (Op::Rotate, Op::Delete, Op::BatchGet));
        assert_eq!(Mix::parse("batch_get=1").unwrap().batch_size(), BATCH_SIZE_DEFAULT);
        assert_eq!(Mix::parse("batch_get:1000=1").unwrap().to_string(), "batch_get:1000=1");
    }

    #[test]
    fn bad_mixes_are_rejected() {
        for bad in [
            "",
            "get",
            "get=x",
            "get=-1",
            "remove=5",
            "get=1,get=2",
            "get=0,put=0",
            "batch_get:0=1",
            "batch_get:1001=1",
            "batch_get:x=1",
            "get:2=1",
            "batch_get:2=1,batch_get=1",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }
}
