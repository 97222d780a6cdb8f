//! Short byte strings held inline: the shard map's keys ([`super::shard::Id`]) and the LIST
//! index's keys ([`super::index`]) are mostly short, and holding them in place instead of
//! behind a pointer saves an allocation per credential and a cache miss per lookup.

/// Up to `N` bytes held inline (`N` ≤ 255), longer ones boxed. Compares and orders as its
/// bytes.
#[derive(Clone)]
pub enum InlineBytes<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Boxed(Box<[u8]>),
}

impl<const N: usize> InlineBytes<N> {
    const FITS_A_U8: () = assert!(N <= u8::MAX as usize);

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            InlineBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            InlineBytes::Boxed(bytes) => bytes,
        }
    }

    /// True when the bytes are held inline.
    #[cfg(test)]
    pub fn is_inline(&self) -> bool {
        matches!(self, InlineBytes::Inline { .. })
    }
}

impl<const N: usize> From<&[u8]> for InlineBytes<N> {
    fn from(value: &[u8]) -> InlineBytes<N> {
        let () = Self::FITS_A_U8;
        if value.len() <= N {
            let mut bytes = [0u8; N];
            bytes[..value.len()].copy_from_slice(value);
            InlineBytes::Inline { len: value.len() as u8, bytes }
        } else {
            InlineBytes::Boxed(value.into())
        }
    }
}

impl<const N: usize> PartialEq for InlineBytes<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<const N: usize> Eq for InlineBytes<N> {}

impl<const N: usize> PartialOrd for InlineBytes<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for InlineBytes<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl<const N: usize> std::borrow::Borrow<[u8]> for InlineBytes<N> {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl<const N: usize> std::fmt::Debug for InlineBytes<N> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        String::from_utf8_lossy(self.as_bytes()).fmt(formatter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_up_to_n_boxed_beyond_ordered_as_bytes() {
        let short = InlineBytes::<4>::from(&b"abcd"[..]);
        let long = InlineBytes::<4>::from(&b"abcde"[..]);
        assert!(short.is_inline() && !long.is_inline());
        assert_eq!((short.as_bytes(), long.as_bytes()), (&b"abcd"[..], &b"abcde"[..]));
        assert!(short < long && InlineBytes::<4>::from(&b"b"[..]) > long);
        assert_eq!(InlineBytes::<4>::from(&b""[..]).as_bytes(), b"");
        assert_ne!(InlineBytes::<4>::from(&b"a\0"[..]), InlineBytes::<4>::from(&b"a"[..]));
    }
}
