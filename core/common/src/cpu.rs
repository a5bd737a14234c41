//! The processor features a program may have chosen code for. glibc (its
//! string functions through IFUNC), math libraries and JITs pick code paths
//! by CPU feature at start-up and never look again, so a process restored
//! on a processor without one of those features dies of SIGILL at some
//! later instruction. Images record the features of the processor they
//! were taken on; `dmtcp_restart` refuses, with a clear message, a restart
//! on a processor that lacks any of them (`--no-strict-checking` restarts
//! anyway).

/// Instruction-set features (names as in /proc/cpuinfo) that user code
/// selects code paths by. Other flags (virtualization, power management,
/// kernel mitigations) do not matter to a restored program.
pub const ISA_FLAGS: &[&str] = &[
    "sse",
    "sse2",
    "ssse3",
    "sse4_1",
    "sse4_2",
    "sse4a",
    "pni",
    "popcnt",
    "cx16",
    "movbe",
    "aes",
    "pclmulqdq",
    "avx",
    "avx2",
    "f16c",
    "fma",
    "fma4",
    "bmi1",
    "bmi2",
    "lzcnt",
    "abm",
    "adx",
    "rdrand",
    "rdseed",
    "sha_ni",
    "erms",
    "fsrm",
    "xsave",
    "xsaveopt",
    "xsavec",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_bitalg",
    "avx512_vpopcntdq",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "vaes",
    "vpclmulqdq",
    "gfni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "clflushopt",
    "clwb",
    "movdiri",
    "movdir64b",
    "serialize",
    "waitpkg",
];

/// The ISA features of this processor, from the first "flags" line of
/// `cpuinfo` (the text of /proc/cpuinfo).
pub fn isa_flags_of(cpuinfo: &str) -> Vec<String> {
    let Some(line) = cpuinfo.lines().find(|l| l.starts_with("flags")) else {
        return Vec::new();
    };
    let have: Vec<&str> = line
        .split_once(':')
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    ISA_FLAGS
        .iter()
        .filter(|f| have.contains(f))
        .map(|f| f.to_string())
        .collect()
}

/// The ISA features of the processor this runs on (empty if unknown).
pub fn isa_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| isa_flags_of(&s))
        .unwrap_or_default()
}

/// The features of `needed` that `have` lacks (nothing when either list is
/// unknown, i.e. empty).
pub fn missing(needed: &[String], have: &[String]) -> Vec<String> {
    if have.is_empty() {
        return Vec::new();
    }
    needed
        .iter()
        .filter(|f| !have.contains(f))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_and_compared() {
        let info = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 hypervisor bmi2\nbugs\t: x\nflags\t: avx512f\n";
        let f = isa_flags_of(info);
        assert_eq!(f, ["sse", "sse2", "avx", "avx2", "bmi2"]);
        let needed: Vec<String> = ["avx2", "avx512f", "sse"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(missing(&needed, &f), ["avx512f"]);
        assert!(
            missing(&needed, &[]).is_empty(),
            "an unknown processor is not held against the image"
        );
        assert!(missing(&[], &f).is_empty());
        assert!(isa_flags_of("no flags here").is_empty());
    }
}
