//! The bytes of an answer with blanks dropped and letters lower-cased:
//! what the scrubber searches first, and the coordinates in which it
//! decides what to read and what to hold. A spelling broken by blanks
//! (a hex dump's `73 6b 2d`, base64 wrapped at 76 columns, halves of the
//! key 300 spaces apart: re-review) is whole here, and a run of blanks
//! however long takes no room, so a reach measured here is the same in a
//! frame and across frames.
//!
//! Written by hand: a squeeze that keeps no map (the map back is walked
//! again only where something is found or must be read) is a loop no
//! crate offers.

/// Blanks: dropped from the squeezed copy and from a reading.
pub(super) const BLANK: [bool; 256] = {
    let mut t = [false; 256];
    // Every byte at or below a space: the blanks, and control
    // characters, which no reader sees either.
    let mut k = 0;
    while k <= 0x20 {
        t[k] = true;
        k += 1;
    }
    t
};

/// `hay` lower-cased, without blanks, into `out` (replacing what it held).
pub(super) fn squeeze(hay: &[u8], out: &mut Vec<u8>) {
    squeeze_after(hay, out, 0);
}

/// `hay` squeezed onto the end of `out`.
pub(super) fn squeeze_onto(hay: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    squeeze_after(hay, out, at);
}

/// `hay` squeezed into `out` after its first `at` bytes (replacing what
/// followed them).
fn squeeze_after(hay: &[u8], out: &mut Vec<u8>, at: usize) {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const fn each(b: u8) -> u64 {
        u64::from_le_bytes([b; 8])
    }
    // Eight bytes are written at each step and the next step writes over
    // what was not kept: room for the last step's eight. Not cleared
    // first: only the bytes past the last squeeze's end are zeroed (a
    // whole body's memset was 0.7% of a 64 KiB response's CPU).
    out.resize(at + hay.len() + 8, 0);
    let mut j = at;
    let mut words = hay.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // Per byte, in its high bit, without carries between bytes (the
        // low seven bits plus a constant stay below 256): above a space,
        // and in `A..=Z`.
        let low = v & LOW7;
        let kept = ((low + each(0x80 - 0x21)) | v) & HIGH;
        let upper = (low + each(0x80 - 0x41)) & !(low + each(0x80 - 0x5b)) & !v & HIGH;
        let lowered = (v | (upper >> 2)).to_le_bytes();
        let dst = &mut out[j..j + 8];
        if kept == HIGH {
            // No blank in the eight (most words of most bodies): one
            // store, where the shuffle below is eight.
            dst.copy_from_slice(&lowered);
            j += 8;
            continue;
        }
        // The high bits gathered into one byte: which bytes are kept.
        let mask = ((kept >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as usize;
        let order = &SHUFFLE[mask & 0xff];
        for k in 0..8 {
            dst[k] = lowered[usize::from(order[k]) & 7];
        }
        j += mask.count_ones() as usize;
    }
    out.truncate(j);
    out.extend(
        words
            .remainder()
            .iter()
            .filter(|b| !BLANK[usize::from(**b)])
            .map(u8::to_ascii_lowercase),
    );
}

/// For each set of kept bytes of eight (bit `k` for byte `k`), the kept
/// bytes' places in order.
static SHUFFLE: [[u8; 8]; 256] = {
    let mut t = [[0u8; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut k, mut n) = (0, 0);
        while k < 8 {
            if m & (1 << k) != 0 {
                t[m][n] = k as u8;
                n += 1;
            }
            k += 1;
        }
        m += 1;
    }
    t
};

/// Where squeezed offsets are in `hay`: `points` (squeezed offsets, in
/// ascending order) are replaced by the offset in `hay` of the byte they
/// were squeezed from; an offset past the last byte maps to `hay.len()`.
pub(super) fn to_raw(hay: &[u8], points: &mut [usize]) {
    // `seen` non-blank bytes lie in `hay[..i]`.
    let (mut i, mut seen) = (0usize, 0usize);
    for p in points.iter_mut() {
        while seen < *p && i < hay.len() {
            // A chunk of as many bytes as are still wanted: counted at
            // once (the count vectorizes), so long runs of text cost one
            // pass and runs of blanks shrink the next chunk.
            let end = (i + (*p - seen)).min(hay.len());
            let blanks = hay[i..end]
                .iter()
                .filter(|b| BLANK[usize::from(**b)])
                .count();
            seen += end - i - blanks;
            i = end;
        }
        while i < hay.len() && BLANK[usize::from(hay[i])] {
            i += 1;
        }
        *p = i;
    }
}

/// Where in `hay` its last `n` non-blank bytes begin, looking back at
/// most `cap` bytes.
pub(super) fn last(hay: &[u8], n: usize, cap: usize) -> usize {
    let floor = hay.len().saturating_sub(cap);
    let mut p = hay.len();
    let mut left = n;
    while left > 0 && p > floor {
        p -= 1;
        if !BLANK[usize::from(hay[p])] {
            left -= 1;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The squeeze one byte at a time, as the oracle.
    fn plain(hay: &[u8]) -> Vec<u8> {
        hay.iter()
            .filter(|b| **b > b' ')
            .map(u8::to_ascii_lowercase)
            .collect()
    }

    proptest::proptest! {
        /// Eight bytes at a time gives what one at a time gives, for any
        /// bytes (the per-byte arithmetic must not carry between bytes).
        #[test]
        fn squeeze_is_the_plain_filter(hay in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut out = Vec::new();
            squeeze(&hay, &mut out);
            proptest::prop_assert_eq!(out, plain(&hay));
        }

        /// A buffer kept from an earlier squeeze, longer or shorter,
        /// leaves nothing of it behind.
        #[test]
        fn a_reused_buffer_is_the_plain_filter(
            first in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            hay in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let mut out = Vec::new();
            squeeze(&first, &mut out);
            squeeze(&hay, &mut out);
            proptest::prop_assert_eq!(out, plain(&hay));
        }
    }

    #[test]
    fn every_byte_value_squeezes_as_it_should() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let mut out = Vec::new();
        squeeze(&all, &mut out);
        assert_eq!(out, plain(&all));
    }

    #[test]
    fn squeezed_offsets_map_back() {
        let hay = b"  Ab \t c\r\n\x0Bd  e ";
        let mut sq = Vec::new();
        squeeze(hay, &mut sq);
        assert_eq!(sq, b"abcde");
        let mut points = [0, 1, 2, 3, 4, 5];
        to_raw(hay, &mut points);
        assert_eq!(points, [2, 3, 7, 11, 14, hay.len()]);
        assert_eq!(last(hay, 2, 100), 11);
        assert_eq!(last(hay, 5, 100), 2);
        assert_eq!(last(hay, 5, 4), hay.len() - 4);
        // A long run of blanks, and none.
        let long = [b"x".as_slice(), &[b' '; 5000], b"yz"].concat();
        let mut points = [1, 2, 3];
        to_raw(&long, &mut points);
        assert_eq!(points, [5001, 5002, 5003]);
        let mut points = [0, 7];
        to_raw(b"abcdefgh", &mut points);
        assert_eq!(points, [0, 7]);
    }
}
