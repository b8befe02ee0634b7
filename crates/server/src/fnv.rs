//! FNV-1a, 64 bits: the hash of idempotency fingerprints. A fixed function on purpose:
//! fingerprints are stored in the replicated state and compared on other nodes and versions,
//! so this must never change (std's hashers are seeded and may change between releases).

pub(crate) struct Fnv1a(pub(crate) u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub(crate) fn tag(&mut self, tag: u8) {
        self.bytes(&[tag]);
    }
    pub(crate) fn flag(&mut self, flag: bool) {
        self.bytes(&[u8::from(flag)]);
    }
    /// Length-prefixed, so `("ab", "c")` and `("a", "bc")` differ.
    pub(crate) fn text(&mut self, text: &str) {
        self.bytes(&(text.len() as u64).to_le_bytes());
        self.bytes(text.as_bytes());
    }
    pub(crate) fn option_u64(&mut self, value: Option<u64>) {
        match value {
            None => self.tag(0),
            Some(value) => {
                self.tag(1);
                self.bytes(&value.to_le_bytes());
            }
        }
    }
    pub(crate) fn option_text(&mut self, value: Option<&str>) {
        match value {
            None => self.tag(0),
            Some(text) => {
                self.tag(1);
                self.text(text);
            }
        }
    }
}

impl std::io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Fnv1a;

    #[test]
    fn is_standard_fnv1a() {
        let mut hash = Fnv1a::default();
        hash.bytes(b"foobar");
        assert_eq!(hash.0, 0x8594_4171_f739_67e8);
    }
}
