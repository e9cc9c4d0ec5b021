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
/// followed them): sixteen bytes at a time where the CPU has SSSE3's
/// byte shuffle (every x86-64 since 2008), eight otherwise.
fn squeeze_after(hay: &[u8], out: &mut Vec<u8>, at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v2) = *SSSE3 {
        v2.vectorize(
            #[inline(always)]
            || shuffled(v2, hay, out, at),
        );
        return;
    }
    words(hay, out, at);
}

/// The CPU's SSE up to 4.2 (SSSE3's shuffle is what is used), looked up
/// once.
#[cfg(target_arch = "x86_64")]
static SSSE3: std::sync::LazyLock<Option<pulp::x86::V2>> =
    std::sync::LazyLock::new(pulp::x86::V2::try_new);

/// [`squeeze_after`] sixteen bytes at a time: which bytes are kept and
/// their lower case by compares, then each half of eight packed by one
/// shuffle from [`SHUFFLE`]. Safe intrinsics through `pulp`, whose
/// `vectorize` runs this with the features it detected (the workspace
/// forbids `unsafe`); a blank-free chunk (most of a compact body) is one
/// store. 2.8 times the words' speed on the suite's 64 KiB JSON (8.5
/// against 24 µs), 2.2 times on JSON without blanks.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn shuffled(v2: pulp::x86::V2, hay: &[u8], out: &mut Vec<u8>, at: usize) {
    use core::arch::x86_64::__m128i;
    // The second half's places, counted from the vector's start.
    const SECOND: u64 = 0x0808_0808_0808_0808;
    let (sse2, ssse3) = (v2.sse2, v2.ssse3);
    // Room for the last chunk's two stores of eight.
    out.resize(at + hay.len() + 16, 0);
    let mut j = at;
    let above_blank = sse2._mm_set1_epi8(0x21);
    let a = sse2._mm_set1_epi8(b'A' as i8);
    let z_from_a = sse2._mm_set1_epi8(25);
    let case_bit = sse2._mm_set1_epi8(0x20);
    let mut chunks = hay.chunks_exact(16);
    for c in &mut chunks {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(c);
        let v: __m128i = pulp::cast(bytes);
        // Unsigned compares as max/min and equality: kept is `v >= 0x21`,
        // upper case is `v - 'A' <= 25`.
        let kept = sse2._mm_cmpeq_epi8(sse2._mm_max_epu8(v, above_blank), v);
        let from_a = sse2._mm_sub_epi8(v, a);
        let upper = sse2._mm_cmpeq_epi8(sse2._mm_min_epu8(from_a, z_from_a), from_a);
        let lowered = sse2._mm_or_si128(v, sse2._mm_and_si128(upper, case_bit));
        // One bit per byte; the sign bit of a compare's 0xff.
        let mask = sse2._mm_movemask_epi8(kept) as u32;
        if mask == 0xffff {
            let whole: [u8; 16] = pulp::cast(lowered);
            out[j..j + 16].copy_from_slice(&whole);
            j += 16;
            continue;
        }
        let (first, second) = ((mask & 0xff) as usize, (mask >> 8) as usize);
        let order: [u64; 2] = [
            u64::from_le_bytes(SHUFFLE[first]),
            u64::from_le_bytes(SHUFFLE[second]) + SECOND,
        ];
        let packed: [u8; 16] = pulp::cast(ssse3._mm_shuffle_epi8(lowered, pulp::cast(order)));
        out[j..j + 8].copy_from_slice(&packed[..8]);
        j += first.count_ones() as usize;
        out[j..j + 8].copy_from_slice(&packed[8..]);
        j += second.count_ones() as usize;
    }
    out.truncate(j);
    rest(chunks.remainder(), out);
}

/// The last bytes, fewer than a step: one at a time.
fn rest(tail: &[u8], out: &mut Vec<u8>) {
    out.extend(
        tail.iter()
            .filter(|b| !BLANK[usize::from(**b)])
            .map(u8::to_ascii_lowercase),
    );
}

/// [`squeeze_after`] eight bytes at a time, in a `u64`.
fn words(hay: &[u8], out: &mut Vec<u8>, at: usize) {
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
    let mut eights = hay.chunks_exact(8);
    for w in &mut eights {
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
    rest(eights.remainder(), out);
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

    /// Each way of squeezing this machine has, after `at` bytes already
    /// in `out`: what it left there.
    fn every_way(hay: &[u8], out: &[u8], at: usize) -> Vec<(&'static str, Vec<u8>)> {
        let run = |f: fn(&[u8], &mut Vec<u8>, usize)| {
            let mut o = out.to_vec();
            f(hay, &mut o, at);
            o
        };
        let mut ways = vec![("squeeze", run(squeeze_after)), ("words", run(words))];
        #[cfg(target_arch = "x86_64")]
        if let Some(v2) = *SSSE3 {
            let mut o = out.to_vec();
            v2.vectorize(|| shuffled(v2, hay, &mut o, at));
            ways.push(("shuffled", o));
        }
        ways
    }

    /// Bytes where blanks, capitals and the bytes around both are common.
    fn blanky() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        let byte = proptest::sample::select(&b" \t\r\n\x00\x1f!@AZ[`az{\x7f\x80\xff"[..]);
        proptest::collection::vec(byte, 0..300)
    }

    proptest::proptest! {
        /// Eight and sixteen bytes at a time give what one at a time
        /// gives, for any bytes (the per-byte arithmetic must not carry
        /// between bytes, the compares are unsigned).
        #[test]
        fn squeeze_is_the_plain_filter(hay in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            for (way, out) in every_way(&hay, &[], 0) {
                proptest::prop_assert_eq!(out, plain(&hay), "{}", way);
            }
        }

        /// The same where most chunks hold blanks and capitals, and after
        /// bytes already squeezed.
        #[test]
        fn squeeze_is_the_plain_filter_on_blanks(
            hay in blanky(),
            before in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let want = [before.clone(), plain(&hay)].concat();
            for (way, out) in every_way(&hay, &before, before.len()) {
                proptest::prop_assert_eq!(&out, &want, "{}", way);
            }
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
        let ways = every_way(&all, &[], 0);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            ways.len(),
            3,
            "this x86-64 has SSSE3: the shuffle is tested"
        );
        for (way, out) in ways {
            assert_eq!(out, plain(&all), "{way}");
        }
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
