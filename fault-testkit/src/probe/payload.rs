//! The content of a probe datagram: an 8-byte sequence number, the 8-byte send time
//! (`CLOCK_BOOTTIME` ns), both little-endian, then a pattern derived from the two, so that
//! any change of any bit is seen by the receiver.
use anyhow::{Result, bail};

/// Bytes before the pattern: sequence number and send time.
const HEADER_LEN: usize = 16;

/// Smallest payload: the header and 8 bytes of pattern (in bytes).
pub const MIN_PAYLOAD_LEN: usize = HEADER_LEN + 8;

/// Largest payload that fits one IPv6 datagram on a 1500-byte MTU (in bytes).
pub const MAX_PAYLOAD_LEN: usize = 1500 - 40 - 8;

/// Checks a payload length (in bytes) against [`MIN_PAYLOAD_LEN`] and [`MAX_PAYLOAD_LEN`].
pub fn check_len(len: usize) -> Result<()> {
    if !(MIN_PAYLOAD_LEN..=MAX_PAYLOAD_LEN).contains(&len) {
        bail!("payload length {len} B outside {MIN_PAYLOAD_LEN}..={MAX_PAYLOAD_LEN} B");
    }
    Ok(())
}

/// The splitmix64 finalizer: a bijection on u64 where every input bit changes about half of
/// the output bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Pattern word `j` (bytes `16 + 8j ..`) of the datagram `(seq, send_ns)`.
fn word(seq: u64, send_ns: u64, j: usize) -> u64 {
    mix(mix(seq ^ 0x5eed_fa17_0000_0001) ^ send_ns ^ (j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn fill_pattern(out: &mut [u8], seq: u64, send_ns: u64) {
    for (j, chunk) in out.chunks_mut(8).enumerate() {
        let w = word(seq, send_ns, j).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Writes datagram `(seq, send_ns)` over the whole of `buf` (at least [`MIN_PAYLOAD_LEN`]).
pub fn encode(buf: &mut [u8], seq: u64, send_ns: u64) {
    if buf.len() < HEADER_LEN {
        return;
    }
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&send_ns.to_le_bytes());
    fill_pattern(&mut buf[HEADER_LEN..], seq, send_ns);
}

/// `Some((seq, send_ns))` when `buf` is `expected_len` bytes long and its pattern matches its
/// header: the datagram arrived intact.
pub fn decode(buf: &[u8], expected_len: usize) -> Option<(u64, u64)> {
    if buf.len() != expected_len || buf.len() < MIN_PAYLOAD_LEN {
        return None;
    }
    let seq = u64::from_le_bytes(buf[..8].try_into().ok()?);
    let send_ns = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let intact = buf[HEADER_LEN..].chunks(8).enumerate().all(|(j, chunk)| {
        let w = word(seq, send_ns, j).to_le_bytes();
        chunk == &w[..chunk.len()]
    });
    intact.then_some((seq, send_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_bit_flip_is_detected() {
        for len in [MIN_PAYLOAD_LEN, 64, 67] {
            let mut buf = vec![0u8; len];
            encode(&mut buf, 42, 123_456_789);
            assert_eq!(decode(&buf, len), Some((42, 123_456_789)));
            for byte in 0..len {
                for bit in 0..8 {
                    let mut b = buf.clone();
                    b[byte] ^= 1 << bit;
                    assert_eq!(
                        decode(&b, len),
                        None,
                        "flip at {byte}:{bit} of {len} B undetected"
                    );
                }
            }
        }
    }

    #[test]
    fn wrong_length_is_not_intact() {
        let mut buf = vec![0u8; 64];
        encode(&mut buf, 1, 2);
        assert_eq!(decode(&buf[..63], 64), None);
        assert_eq!(decode(&buf, 65), None);
    }
}
