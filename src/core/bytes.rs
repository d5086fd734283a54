//! The one reader of the core's binary formats (the shared-data record, the fleet record,
//! the holder claim, the shadow and the probe slots). Every value it reads may be damaged,
//! from another build or written by a VM that trapped halfway, so every read is
//! bounds-checked and a read past the end is `None`, never zeros and never a panic.

/// Little-endian fields read off the front of stored bytes, in order.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// The next `n` bytes; `None`, with nothing read, when fewer are left.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.array()?))
    }

    /// The bytes not read yet (all of them are then read).
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.bytes.get(self.at..).unwrap_or_default();
        self.at = self.bytes.len();
        out
    }

    /// Whether every byte has been read: a format that ends where its fields end refuses
    /// trailing bytes.
    pub fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_read_in_order_little_endian() {
        let mut bytes = vec![7u8];
        bytes.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&(-2i64).to_le_bytes());
        bytes.extend_from_slice(b"tail");
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.u32(), Some(0x0102_0304));
        assert_eq!(r.u64(), Some(u64::MAX));
        assert_eq!(r.i64(), Some(-2));
        assert!(!r.is_done());
        assert_eq!(r.rest(), b"tail");
        assert!(r.is_done());
    }

    #[test]
    fn a_read_past_the_end_is_none_and_reads_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), None);
        assert_eq!(r.take(usize::MAX), None, "no overflow on a huge length");
        assert_eq!(r.array::<3>(), Some([1, 2, 3]));
        assert_eq!(r.u8(), None);
        assert!(r.is_done());
    }

    proptest! {
        #[test]
        fn reads_never_pass_the_end(bytes in proptest::collection::vec(any::<u8>(), 0..40),
                                    sizes in proptest::collection::vec(0usize..12, 0..12)) {
            let mut r = Reader::new(&bytes);
            let mut read = 0;
            for n in sizes {
                match r.take(n) {
                    Some(got) => {
                        prop_assert_eq!(got, &bytes[read..read + n]);
                        read += n;
                    }
                    None => prop_assert!(read + n > bytes.len()),
                }
            }
            prop_assert_eq!(r.rest(), &bytes[read..]);
        }
    }
}
