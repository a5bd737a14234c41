//! The content hash of incremental images: xxh3-128 (seed 0, default
//! secret), computed with AVX-512 or AVX2 when the CPU has them.
//!
//! The project is built for baseline x86-64, so `xxhash_rust` runs its
//! SSE2 code. Chunks are long (up to 64 KiB), and for inputs longer than
//! 240 bytes xxh3 is a loop over 64-byte stripes feeding eight 64-bit
//! accumulators, a scramble every 1 KiB and a short scalar finish. This
//! module runs that loop with 512-bit or 256-bit vectors, chosen once at
//! run time ([`init`], before anything is suspended). The result is the
//! same function, bit for bit, as `xxhash_rust::xxh3::xxh3_128` (the unit
//! tests compare every variant with it), so images keep their format and
//! an image written on one CPU is compared correctly on another. Short
//! inputs and CPUs without AVX2 use `xxhash_rust` itself.
//!
//! Nothing here allocates or takes a lock: the writers call [`hash128`]
//! while the program is suspended.

use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// Which code [`hash128`] runs: 0 not chosen yet, then one of these.
static LEVEL: AtomicU8 = AtomicU8::new(0);
const GENERIC: u8 = 1;
const AVX2: u8 = 2;
const AVX512: u8 = 3;

/// Choose the code for this CPU: at start, and again after a restart,
/// which may be on another CPU (the choice is in the image's memory).
/// Call it before the writers run. It asks the CPU itself (CPUID and
/// XGETBV) rather than `std`'s feature cache, which is in the image too.
pub fn init() -> &'static str {
    let level = detect();
    LEVEL.store(level, Relaxed);
    match level {
        AVX512 => "avx512",
        AVX2 => "avx2",
        _ => "generic",
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> u8 {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    let (max, l1) = (__cpuid(0).eax, __cpuid(1));
    let osxsave = l1.ecx >> 27 & 1 != 0;
    if max < 7 || !osxsave {
        return GENERIC;
    }
    let l7 = __cpuid_count(7, 0);
    // SAFETY: OSXSAVE says the OS enabled XGETBV.
    let xcr0 = unsafe { xcr0() };
    // The OS saves the SSE and AVX registers; for AVX-512 also the opmask
    // and upper ZMM state.
    let ymm = xcr0 & 0b110 == 0b110;
    let zmm = ymm && xcr0 & 0xE0 == 0xE0;
    if zmm && l7.ebx >> 16 & 1 != 0 {
        AVX512
    } else if ymm && l7.ebx >> 5 & 1 != 0 {
        AVX2
    } else {
        GENERIC
    }
}

/// XCR0: the register state the OS saves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    // SAFETY: the caller checked OSXSAVE.
    unsafe { core::arch::x86_64::_xgetbv(0) }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> u8 {
    GENERIC
}

/// xxh3-128 of `data`.
pub fn hash128(data: &[u8]) -> u128 {
    if data.len() <= MID_MAX {
        return xxhash_rust::xxh3::xxh3_128(data);
    }
    let mut level = LEVEL.load(Relaxed);
    if level == 0 {
        level = detect();
        LEVEL.store(level, Relaxed);
    }
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: the CPU has AVX-512F (tested by `detect`); the input is
        // longer than one stripe.
        AVX512 => return unsafe { x86::long_avx512(data) },
        // SAFETY: the CPU has AVX2 (tested by `detect`); as above.
        AVX2 => return unsafe { x86::long_avx2(data) },
        _ => {}
    }
    xxhash_rust::xxh3::xxh3_128(data)
}

/// Inputs up to this length take xxh3's short paths.
const MID_MAX: usize = 240;
const STRIPE: usize = 64;
const SECRET_LEN: usize = 192;
/// Stripes between scrambles, each taking the secret 8 bytes further.
const STRIPES_PER_BLOCK: usize = (SECRET_LEN - STRIPE) / 8;
const BLOCK_LEN: usize = STRIPE * STRIPES_PER_BLOCK;
/// Where in the secret the last stripe's key and the merges start.
const LAST_STRIPE_KEY: usize = SECRET_LEN - STRIPE - 7;
const MERGE_LO_KEY: usize = 11;
const MERGE_HI_KEY: usize = SECRET_LEN - STRIPE - 11;

const PRIME32_1: u32 = 0x9E37_79B1;
const PRIME32_2: u32 = 0x85EB_CA77;
const PRIME32_3: u32 = 0xC2B2_AE3D;
const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;

const INIT_ACC: [u64; 8] = [
    PRIME32_3 as u64,
    PRIME64_1,
    PRIME64_2,
    PRIME64_3,
    PRIME64_4,
    PRIME32_2 as u64,
    PRIME64_5,
    PRIME32_1 as u64,
];

/// xxh3's default secret (the specification's `kSecret`).
const SECRET: [u8; SECRET_LEN] = [
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
];

fn key64(off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&SECRET[off..off + 8]);
    u64::from_le_bytes(b)
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(0x1656_6791_9E37_79F9);
    h ^ (h >> 32)
}

/// Fold the accumulators into 64 bits with the secret from `key`.
fn merge(acc: &[u64; 8], key: usize, start: u64) -> u64 {
    let mut r = start;
    for i in 0..4 {
        let a = acc[2 * i] ^ key64(key + 16 * i);
        let b = acc[2 * i + 1] ^ key64(key + 16 * i + 8);
        let p = a as u128 * b as u128;
        r = r.wrapping_add(p as u64 ^ (p >> 64) as u64);
    }
    avalanche(r)
}

/// The 128-bit result from the accumulators of an input of `len` bytes.
fn finish(acc: &[u64; 8], len: usize) -> u128 {
    let len = len as u64;
    let lo = merge(acc, MERGE_LO_KEY, len.wrapping_mul(PRIME64_1));
    let hi = merge(acc, MERGE_HI_KEY, !len.wrapping_mul(PRIME64_2));
    lo as u128 | (hi as u128) << 64
}

/// The stripe loop of xxh3's long inputs over `$data` (longer than
/// [`MID_MAX`]): `$acc` is the vector state, `$stripe(&mut acc, input
/// pointer, secret pointer)` takes in one 64-byte stripe and
/// `$scramble(&mut acc, secret pointer)` ends each block.
#[cfg(target_arch = "x86_64")]
macro_rules! long_loop {
    ($data:ident, $acc:ident, $stripe:ident, $scramble:ident) => {{
        let len = $data.len();
        let p = $data.as_ptr();
        let s = SECRET.as_ptr();
        let blocks = (len - 1) / BLOCK_LEN;
        for n in 0..blocks {
            let b = p.add(n * BLOCK_LEN);
            for k in 0..STRIPES_PER_BLOCK {
                $stripe(&mut $acc, b.add(k * STRIPE), s.add(k * 8));
            }
            $scramble(&mut $acc, s.add(SECRET_LEN - STRIPE));
        }
        let b = p.add(blocks * BLOCK_LEN);
        for k in 0..((len - 1) - blocks * BLOCK_LEN) / STRIPE {
            $stripe(&mut $acc, b.add(k * STRIPE), s.add(k * 8));
        }
        $stripe(&mut $acc, p.add(len - STRIPE), s.add(LAST_STRIPE_KEY));
    }};
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use core::arch::x86_64::*;

    /// `acc[i] += lo32(d ^ k) * hi32(d ^ k); acc[i ^ 1] += d` for the
    /// 64-bit lanes of one stripe.
    #[target_feature(enable = "avx512f")]
    unsafe fn stripe512(acc: &mut __m512i, input: *const u8, key: *const u8) {
        // SAFETY: the caller passes 64 readable bytes at each pointer.
        let (d, k) = unsafe {
            (
                _mm512_loadu_si512(input as *const __m512i),
                _mm512_loadu_si512(key as *const __m512i),
            )
        };
        let dk = _mm512_xor_si512(d, k);
        let prod = _mm512_mul_epu32(dk, _mm512_srli_epi64::<32>(dk));
        let swapped = _mm512_shuffle_epi32::<0x4E>(d);
        *acc = _mm512_add_epi64(prod, _mm512_add_epi64(*acc, swapped));
    }

    /// `acc = (acc ^ acc >> 47 ^ k) * PRIME32_1` in each 64-bit lane.
    #[target_feature(enable = "avx512f")]
    unsafe fn scramble512(acc: &mut __m512i, key: *const u8) {
        // SAFETY: the caller passes 64 readable bytes.
        let k = unsafe { _mm512_loadu_si512(key as *const __m512i) };
        let a = _mm512_xor_si512(_mm512_xor_si512(*acc, _mm512_srli_epi64::<47>(*acc)), k);
        let prime = _mm512_set1_epi32(PRIME32_1 as i32);
        let lo = _mm512_mul_epu32(a, prime);
        let hi = _mm512_mul_epu32(_mm512_srli_epi64::<32>(a), prime);
        *acc = _mm512_add_epi64(lo, _mm512_slli_epi64::<32>(hi));
    }

    /// xxh3-128 of `data` (longer than `MID_MAX` bytes) with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn long_avx512(data: &[u8]) -> u128 {
        debug_assert!(data.len() > MID_MAX);
        // SAFETY: INIT_ACC is 64 bytes.
        let mut acc = unsafe { _mm512_loadu_si512(INIT_ACC.as_ptr() as *const __m512i) };
        // SAFETY: every stripe read lies in `data` (the last one ends at its
        // end, and len > 64) and every key read in SECRET (the last key
        // starts at SECRET_LEN - 64 at most).
        unsafe { long_loop!(data, acc, stripe512, scramble512) };
        let mut out = [0u64; 8];
        // SAFETY: out is 64 bytes.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, acc) };
        finish(&out, data.len())
    }

    /// As [`stripe512`], on two 256-bit halves.
    #[target_feature(enable = "avx2")]
    unsafe fn stripe256(acc: &mut [__m256i; 2], input: *const u8, key: *const u8) {
        for (h, a) in acc.iter_mut().enumerate() {
            // SAFETY: the caller passes 64 readable bytes at each pointer.
            let (d, k) = unsafe {
                (
                    _mm256_loadu_si256(input.add(32 * h) as *const __m256i),
                    _mm256_loadu_si256(key.add(32 * h) as *const __m256i),
                )
            };
            let dk = _mm256_xor_si256(d, k);
            let prod = _mm256_mul_epu32(dk, _mm256_srli_epi64::<32>(dk));
            let swapped = _mm256_shuffle_epi32::<0x4E>(d);
            *a = _mm256_add_epi64(prod, _mm256_add_epi64(*a, swapped));
        }
    }

    /// As [`scramble512`], on two 256-bit halves.
    #[target_feature(enable = "avx2")]
    unsafe fn scramble256(acc: &mut [__m256i; 2], key: *const u8) {
        let prime = _mm256_set1_epi32(PRIME32_1 as i32);
        for (h, a) in acc.iter_mut().enumerate() {
            // SAFETY: the caller passes 64 readable bytes.
            let k = unsafe { _mm256_loadu_si256(key.add(32 * h) as *const __m256i) };
            let x = _mm256_xor_si256(_mm256_xor_si256(*a, _mm256_srli_epi64::<47>(*a)), k);
            let lo = _mm256_mul_epu32(x, prime);
            let hi = _mm256_mul_epu32(_mm256_srli_epi64::<32>(x), prime);
            *a = _mm256_add_epi64(lo, _mm256_slli_epi64::<32>(hi));
        }
    }

    /// xxh3-128 of `data` (longer than `MID_MAX` bytes) with AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn long_avx2(data: &[u8]) -> u128 {
        debug_assert!(data.len() > MID_MAX);
        let init = INIT_ACC.as_ptr() as *const __m256i;
        // SAFETY: INIT_ACC is 64 bytes.
        let mut acc = unsafe { [_mm256_loadu_si256(init), _mm256_loadu_si256(init.add(1))] };
        // SAFETY: as in long_avx512.
        unsafe { long_loop!(data, acc, stripe256, scramble256) };
        let mut out = [0u64; 8];
        let o = out.as_mut_ptr() as *mut __m256i;
        // SAFETY: out is 64 bytes.
        unsafe {
            _mm256_storeu_si256(o, acc[0]);
            _mm256_storeu_si256(o.add(1), acc[1]);
        }
        finish(&out, data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (splitmix64, 8 at a time).
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// Lengths around every boundary of the long loop: stripes, blocks,
    /// pages and the 64 KiB chunk.
    fn lengths() -> Vec<usize> {
        let mut v: Vec<usize> = (0..=300).collect();
        for base in [1024, 2048, 4096, 8192, 16384, 65536, 3 * 4096, 65536 - 4096] {
            v.extend(base - 65..=base + 65);
        }
        v.extend([100_000, 1 << 20]);
        v
    }

    #[test]
    fn same_as_xxhash_rust_on_every_length() {
        let data = bytes((1 << 20) + 200, 7);
        for len in lengths() {
            for off in [0, 1, 13] {
                let d = &data[off..off + len];
                assert_eq!(hash128(d), xxhash_rust::xxh3::xxh3_128(d), "len {len} off {off}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_vector_variant_matches() {
        let avx2 = std::is_x86_feature_detected!("avx2");
        let avx512 = std::is_x86_feature_detected!("avx512f");
        eprintln!("avx2 {avx2}, avx512f {avx512}");
        for seed in 1..4u64 {
            let data = bytes(65536 + 64, seed);
            for len in lengths().into_iter().filter(|&l| l > MID_MAX && l <= 65536) {
                let d = &data[seed as usize..seed as usize + len];
                let want = xxhash_rust::xxh3::xxh3_128(d);
                if avx2 {
                    // SAFETY: AVX2 is present; len > MID_MAX.
                    assert_eq!(unsafe { x86::long_avx2(d) }, want, "avx2 len {len}");
                }
                if avx512 {
                    // SAFETY: AVX-512F is present; len > MID_MAX.
                    assert_eq!(unsafe { x86::long_avx512(d) }, want, "avx512 len {len}");
                }
            }
        }
        // All zeroes and all ones (the accumulators' carries).
        for fill in [0u8, 0xff] {
            let d = vec![fill; 65536];
            let want = xxhash_rust::xxh3::xxh3_128(&d);
            if avx2 {
                // SAFETY: as above.
                assert_eq!(unsafe { x86::long_avx2(&d) }, want);
            }
            if avx512 {
                // SAFETY: as above.
                assert_eq!(unsafe { x86::long_avx512(&d) }, want);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn detection_agrees_with_std() {
        let want = if std::is_x86_feature_detected!("avx512f") {
            "avx512"
        } else if std::is_x86_feature_detected!("avx2") {
            "avx2"
        } else {
            "generic"
        };
        assert_eq!(init(), want);
    }

    #[test]
    fn a_changed_byte_changes_the_hash() {
        let mut d = bytes(65536, 3);
        let h = hash128(&d);
        for i in [0, 1, 63, 64, 1023, 1024, 4095, 40000, 65535] {
            d[i] ^= 1;
            assert_ne!(hash128(&d), h, "byte {i}");
            d[i] ^= 1;
        }
        assert_eq!(hash128(&d), h);
    }
}
