//! Random identifiers: branches, tags, Call-IDs, cnonces.

/// `bytes` random bytes in lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

/// A fresh RFC 3261 branch (with the magic cookie).
pub(crate) fn branch() -> String {
    format!("z9hG4bK{}", random_hex(10))
}

/// A fresh From/To tag.
pub(crate) fn tag() -> String {
    random_hex(6)
}

/// A fresh Call-ID.
pub(crate) fn call_id() -> String {
    random_hex(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_and_well_formed() {
        let (a, b) = (branch(), branch());
        assert_ne!(a, b);
        assert!(a.starts_with("z9hG4bK") && a.len() == 27);
        assert_eq!(tag().len(), 12);
        assert_eq!(call_id().len(), 32);
    }
}
