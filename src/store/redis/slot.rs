//! Redis Cluster hash slots: which of the 16,384 slots a key or shard channel belongs to, as
//! Redis computes it (CRC16/XMODEM of the key's hash tag, or of the whole key without one).

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16_384;

/// The slot of `key`: of the part between the first `{` and the first `}` after it when that
/// part is not empty (the hash tag), else of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), bit by bit: keys are short, and this
/// runs once per ping and per watched user.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_match_what_redis_answers_to_cluster_keyslot() {
        // Each pair read from `redis-cli cluster keyslot` on Redis 7.0.15.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"hb:last:{u:alice}"), 5797);
        assert_eq!(slot(b"hb:ping:{u:alice}"), 5797);
        assert_eq!(slot(b"{user1000}.following"), 3443);
        assert_eq!(slot(b"{user1000}.followers"), 3443);
        // An empty tag: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), 8363);
        // Only the first `{`, and the first `}` after it, count.
        assert_eq!(slot(b"foo{{bar}}zap"), 4015);
        assert_eq!(slot(b"foo{bar}{zap}"), 5061);
        assert_eq!(slot(b"bar"), 5061);
    }
}
