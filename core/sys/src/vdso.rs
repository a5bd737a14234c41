//! The vDSO's entry points, and the proxy that redirects an old vDSO's
//! entry points to a new one.
//!
//! glibc resolves the vDSO's functions once, at start-up, and keeps
//! pointers into it (`__vdso_clock_gettime` for `clock_gettime`, and
//! IFUNC-resolved GOT entries that point straight at `__vdso_time` and
//! `__vdso_gettimeofday`). A restarted process therefore needs, at the old
//! vDSO's address, code that behaves like the old vDSO's entry points.
//! When the running kernel's vDSO has the same layout, moving it there is
//! enough. When it differs (another kernel), the restorer leaves the new
//! vDSO elsewhere and writes, at each old entry point, a trampoline to the
//! same-named entry point of the new one (or a stub doing the system call
//! the function stands for). This is the idea of CRIU's "vDSO proxy".
//!
//! Everything here works on byte slices, allocates nothing and never
//! panics (the restorer is a `no_std` program): it is shared by the
//! preload library (which records the old entry points at checkpoint
//! time) and by the restorer.

/// Longest symbol name a [`VdsoSym`] holds (longer ones are not recorded).
pub const SYM_NAME_MAX: usize = 56;

/// One function exported by a vDSO: its name and its offset from the
/// start of the vDSO mapping. Also the record of the restore stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VdsoSym {
    /// Offset of the entry point from the start of the `[vdso]` mapping.
    pub offset: u64,
    /// The name, NUL-padded.
    pub name: [u8; SYM_NAME_MAX],
}

const _: () = assert!(core::mem::size_of::<VdsoSym>() == 64);

impl Default for VdsoSym {
    fn default() -> Self {
        VdsoSym {
            offset: 0,
            name: [0; SYM_NAME_MAX],
        }
    }
}

impl VdsoSym {
    /// A record for `name` at `offset`; `None` if the name is empty, too
    /// long or holds a NUL.
    pub fn new(name: &[u8], offset: u64) -> Option<VdsoSym> {
        if name.is_empty() || name.len() > SYM_NAME_MAX || name.contains(&0) {
            return None;
        }
        let mut s = VdsoSym {
            offset,
            name: [0; SYM_NAME_MAX],
        };
        s.name[..name.len()].copy_from_slice(name);
        Some(s)
    }

    /// The name without its padding.
    pub fn name(&self) -> &[u8] {
        let n = self
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(SYM_NAME_MAX);
        &self.name[..n]
    }
}

/// Why a vDSO image could not be read.
pub type ElfError = &'static str;

fn get_u16(b: &[u8], at: u64) -> Option<u16> {
    let at = usize::try_from(at).ok()?;
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn get_u32(b: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn get_u64(b: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_SYMENT: u64 = 11;
const DT_GNU_HASH: u64 = 0x6fff_fef5;
const STT_FUNC: u8 = 2;
const STB_GLOBAL: u8 = 1;
const STB_WEAK: u8 = 2;
const SYM_SIZE: u64 = 24;
/// Bound on the symbols read (a vDSO exports about a dozen).
const MAX_SYMS: u64 = 4096;

/// Call `f(name, offset)` for every function a vDSO image exports (defined,
/// global or weak `STT_FUNC` symbols of its dynamic symbol table), with the
/// offset of the entry point from the start of the image. `image` is the
/// whole `[vdso]` mapping as the kernel maps it (an ELF64 x86_64 shared
/// object whose file offsets equal its offsets in memory). Returns the
/// number of functions, or what is wrong with the image; every read is
/// bounds-checked.
pub fn for_each_function(image: &[u8], mut f: impl FnMut(&[u8], u64)) -> Result<usize, ElfError> {
    let bad = "the vDSO is not an ELF64 x86_64 shared object";
    if image.len() < 64 || image[..4] != *b"\x7fELF" || image[4] != 2 || image[5] != 1 {
        return Err(bad);
    }
    if get_u16(image, 18) != Some(62) {
        return Err(bad);
    }
    let phoff = get_u64(image, 32).ok_or(bad)?;
    let phentsize = get_u16(image, 54).ok_or(bad)? as u64;
    let phnum = get_u16(image, 56).ok_or(bad)? as u64;
    if phentsize < 56 {
        return Err(bad);
    }
    // Load bias: vaddr - offset of the first PT_LOAD (old kernels linked the
    // vDSO at a fixed high address; recent ones at 0).
    let (mut load, mut dynamic) = (None, None);
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(bad)?)
            .ok_or(bad)?;
        let p_type = get_u32(image, ph).ok_or(bad)?;
        let p_offset = get_u64(image, ph + 8).ok_or(bad)?;
        let p_vaddr = get_u64(image, ph + 16).ok_or(bad)?;
        let p_filesz = get_u64(image, ph + 32).ok_or(bad)?;
        if p_type == PT_LOAD && load.is_none() {
            load = Some(p_vaddr.wrapping_sub(p_offset));
        } else if p_type == PT_DYNAMIC {
            dynamic = Some((p_offset, p_filesz));
        }
    }
    let bias = load.ok_or("the vDSO has no PT_LOAD segment")?;
    let (dyn_off, dyn_len) = dynamic.ok_or("the vDSO has no dynamic section")?;
    let to_off = |vaddr: u64| vaddr.wrapping_sub(bias);
    let (mut symtab, mut strtab, mut strsz, mut syment, mut hash, mut gnu_hash) =
        (None, None, None, SYM_SIZE, None, None);
    let mut at = dyn_off;
    while at + 16 <= dyn_off.saturating_add(dyn_len) {
        let tag = get_u64(image, at).ok_or(bad)?;
        let val = get_u64(image, at + 8).ok_or(bad)?;
        match tag {
            DT_NULL => break,
            DT_SYMTAB => symtab = Some(to_off(val)),
            DT_STRTAB => strtab = Some(to_off(val)),
            DT_STRSZ => strsz = Some(val),
            DT_SYMENT => syment = val,
            DT_HASH => hash = Some(to_off(val)),
            DT_GNU_HASH => gnu_hash = Some(to_off(val)),
            _ => {}
        }
        at += 16;
    }
    let symtab = symtab.ok_or("the vDSO has no dynamic symbol table")?;
    let strtab = strtab.ok_or("the vDSO has no string table")?;
    let strsz = strsz.unwrap_or((image.len() as u64).saturating_sub(strtab));
    if syment < SYM_SIZE {
        return Err(bad);
    }
    let nsyms = match (hash, gnu_hash) {
        // SysV hash: nbucket, nchain; nchain is the number of symbols.
        (Some(h), _) => get_u32(image, h + 4).ok_or(bad)? as u64,
        (None, Some(g)) => gnu_hash_count(image, g).ok_or(bad)?,
        (None, None) => return Err("the vDSO has no symbol hash table"),
    };
    if nsyms > MAX_SYMS {
        return Err(bad);
    }
    let strings = usize::try_from(strtab)
        .ok()
        .and_then(|s| image.get(s..s.checked_add(usize::try_from(strsz).ok()?)?))
        .ok_or(bad)?;
    let mut n = 0;
    for i in 0..nsyms {
        let s = symtab + i * syment;
        let st_name = get_u32(image, s).ok_or(bad)? as usize;
        let st_info = *image
            .get(usize::try_from(s + 4).map_err(|_| bad)?)
            .ok_or(bad)?;
        let st_shndx = get_u16(image, s + 6).ok_or(bad)?;
        let st_value = get_u64(image, s + 8).ok_or(bad)?;
        let (kind, bind) = (st_info & 0xf, st_info >> 4);
        if kind != STT_FUNC || !(bind == STB_GLOBAL || bind == STB_WEAK) || st_shndx == 0 {
            continue;
        }
        let name = strings.get(st_name..).ok_or(bad)?;
        let name = &name[..name.iter().position(|&c| c == 0).ok_or(bad)?];
        if name.is_empty() {
            continue;
        }
        let off = to_off(st_value);
        if off >= image.len() as u64 {
            return Err("a vDSO symbol lies outside the vDSO");
        }
        f(name, off);
        n += 1;
    }
    Ok(n)
}

/// Number of symbols of a GNU hash table (the highest index in its chains, plus one).
fn gnu_hash_count(image: &[u8], g: u64) -> Option<u64> {
    let nbuckets = get_u32(image, g)? as u64;
    let symoffset = get_u32(image, g + 4)? as u64;
    let bloom_size = get_u32(image, g + 8)? as u64;
    let buckets = g + 16 + bloom_size * 8;
    let chains = buckets + nbuckets * 4;
    let mut last = 0u64;
    for b in 0..nbuckets {
        last = last.max(get_u32(image, buckets + b * 4)? as u64);
    }
    if last < symoffset {
        return Some(symoffset);
    }
    for _ in 0..MAX_SYMS {
        let h = get_u32(image, chains + (last - symoffset) * 4)?;
        if h & 1 != 0 {
            return Some(last + 1);
        }
        last += 1;
    }
    None
}

/// The system call a vDSO function stands for (x86_64), used when the new
/// vDSO lacks a function the old one had.
pub fn fallback_syscall(name: &[u8]) -> Option<u32> {
    let base = name.strip_prefix(b"__vdso_").unwrap_or(name);
    Some(match base {
        b"clock_gettime" => 228,
        b"gettimeofday" => 96,
        b"time" => 201,
        b"getcpu" => 309,
        b"clock_getres" => 229,
        b"getrandom" => 318,
        _ => return None,
    })
}

/// Do the entry points of `old` all exist in `new` at the same offsets?
pub fn same_entry_points(old: &[VdsoSym], new: &[VdsoSym]) -> bool {
    old.iter().all(|o| {
        new.iter()
            .any(|n| n.name() == o.name() && n.offset == o.offset)
    })
}

/// Bytes of `movabs rax, imm64; jmp rax`.
pub const TRAMP_ABS: usize = 12;
/// Bytes of `jmp rel32`.
pub const TRAMP_REL: usize = 5;
/// Bytes of a system-call stub (`mov eax, nr; syscall; ret`) and of the
/// `-ENOSYS` stub (`mov rax, -38; ret`).
pub const STUB_LEN: usize = 8;

/// What [`build_proxy`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Entry points redirected to the new vDSO.
    pub redirected: usize,
    /// Entry points that make the system call (absent from the new vDSO).
    pub syscalls: usize,
    /// Entry points that return -ENOSYS (absent, and no system call known).
    pub enosys: usize,
}

/// Why a proxy cannot be built: a message and the symbol concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyError {
    pub what: &'static str,
    pub sym: VdsoSym,
}

/// Fill `area` (the memory that will sit at the old vDSO's address
/// `area_addr`) with the proxy: at each entry point of `old` (offsets from
/// `area_addr`), a jump to the same-named entry point of the new vDSO,
/// whose address `lookup` gives (`None`: the new vDSO lacks it). A jump is
/// `movabs rax, target; jmp rax` where the next entry point is at least
/// 12 bytes away, else `jmp rel32` if the target is within ±2 GiB. Absent
/// functions get a stub that makes the system call they stand for, or
/// returns -ENOSYS. The bytes before the first entry point (where the old
/// ELF headers were) are zero; the others are `int3`, so a stray jump into
/// the old vDSO traps instead of running garbage.
///
/// `old` is sorted by offset in place. Aliases (several names at one
/// offset, e.g. `time` and `__vdso_time`) share one trampoline; names with
/// the `__vdso_` prefix are looked up first.
pub fn build_proxy(
    old: &mut [VdsoSym],
    lookup: impl Fn(&[u8]) -> Option<u64>,
    area: &mut [u8],
    area_addr: u64,
) -> Result<ProxyStats, ProxyError> {
    old.sort_unstable_by_key(|s| s.offset);
    let first = old
        .first()
        .map_or(area.len(), |s| (s.offset as usize).min(area.len()));
    area[..first].fill(0);
    area[first..].fill(0xcc);
    let mut stats = ProxyStats::default();
    let mut i = 0;
    while i < old.len() {
        let off = old[i].offset;
        let mut j = i;
        while j < old.len() && old[j].offset == off {
            j += 1;
        }
        let group = &old[i..j];
        let err = |what| ProxyError {
            what,
            sym: group[0],
        };
        let end = old
            .get(j)
            .map_or(area.len() as u64, |s| s.offset.min(area.len() as u64));
        if off >= end {
            return Err(err("the old vDSO's entry point lies outside its mapping"));
        }
        let space = (end - off) as usize;
        let at = off as usize;
        let pick = |pref: bool| {
            group
                .iter()
                .filter(move |s| s.name().starts_with(b"__vdso_") == pref)
        };
        let target = pick(true).chain(pick(false)).find_map(|s| lookup(s.name()));
        let code = &mut area[at..at + space];
        match target {
            Some(t) if space >= TRAMP_ABS => {
                code[..2].copy_from_slice(&[0x48, 0xb8]);
                code[2..10].copy_from_slice(&t.to_le_bytes());
                code[10..12].copy_from_slice(&[0xff, 0xe0]);
                stats.redirected += 1;
            }
            Some(t) => {
                let rel = (t as i64).wrapping_sub((area_addr + off + TRAMP_REL as u64) as i64);
                if space < TRAMP_REL {
                    return Err(err(
                        "the old vDSO's entry points are too close together for a trampoline",
                    ));
                }
                if i32::try_from(rel).is_err() {
                    return Err(err(
                        "the old vDSO's entry points are too close together for a 12-byte trampoline, and the new vDSO is over 2 GiB away",
                    ));
                }
                code[0] = 0xe9;
                code[1..5].copy_from_slice(&(rel as i32).to_le_bytes());
                stats.redirected += 1;
            }
            None if space < STUB_LEN => {
                return Err(err("this kernel's vDSO lacks a function of the old one, and there is no room for a stub"));
            }
            None => {
                let pref = group
                    .iter()
                    .find(|s| s.name().starts_with(b"__vdso_"))
                    .unwrap_or(&group[0]);
                match fallback_syscall(pref.name()) {
                    Some(nr) => {
                        code[0] = 0xb8;
                        code[1..5].copy_from_slice(&nr.to_le_bytes());
                        code[5..8].copy_from_slice(&[0x0f, 0x05, 0xc3]);
                        stats.syscalls += 1;
                    }
                    None => {
                        code[..8]
                            .copy_from_slice(&[0x48, 0xc7, 0xc0, 0xda, 0xff, 0xff, 0xff, 0xc3]);
                        stats.enosys += 1;
                    }
                }
            }
        }
        i = j;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn sym(name: &str, off: u64) -> VdsoSym {
        VdsoSym::new(name.as_bytes(), off).unwrap()
    }

    /// The running vDSO, as (address, bytes).
    fn running_vdso() -> (u64, &'static [u8]) {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.ends_with("[vdso]"))
            .expect("a [vdso] mapping");
        let (s, e) = line
            .split_whitespace()
            .next()
            .unwrap()
            .split_once('-')
            .unwrap();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        // SAFETY: the [vdso] mapping is readable and never unmapped or written.
        (s, unsafe {
            core::slice::from_raw_parts(s as *const u8, (e - s) as usize)
        })
    }

    fn running_syms() -> Vec<VdsoSym> {
        let (_, img) = running_vdso();
        let mut v = Vec::new();
        for_each_function(img, |n, o| v.push(VdsoSym::new(n, o).unwrap())).unwrap();
        v
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(sym("__vdso_time", 0xae0).name(), b"__vdso_time");
        assert!(VdsoSym::new(b"", 1).is_none());
        assert!(VdsoSym::new(&[b'a'; SYM_NAME_MAX + 1], 1).is_none());
        assert_eq!(
            VdsoSym::new(&[b'a'; SYM_NAME_MAX], 1).unwrap().name().len(),
            SYM_NAME_MAX
        );
    }

    #[test]
    fn reads_the_running_vdso() {
        let (_, img) = running_vdso();
        let syms = running_syms();
        let cg = syms
            .iter()
            .find(|s| s.name() == b"__vdso_clock_gettime")
            .expect("__vdso_clock_gettime");
        assert!(cg.offset > 64 && (cg.offset as usize) < img.len());
        assert!(syms.iter().any(|s| s.name() == b"__vdso_gettimeofday"));
        assert!(same_entry_points(&syms, &syms));
        let mut moved = syms.clone();
        moved[0].offset += 16;
        assert!(!same_entry_points(&moved, &syms));
    }

    #[test]
    fn rejects_garbage() {
        assert!(for_each_function(&[], |_, _| ()).is_err());
        assert!(for_each_function(&[0u8; 4096], |_, _| ()).is_err());
        // A truncated copy of the real vDSO: every read is checked.
        let (_, img) = running_vdso();
        for cut in [64usize, 200, 400, 0x300, 0x500] {
            let _ = for_each_function(&img[..cut.min(img.len())], |_, _| ());
        }
    }

    #[test]
    fn trampolines_and_stubs() {
        let mut old = [
            sym("b", 0x40),
            sym("__vdso_a", 0x10),
            sym("a", 0x10),
            sym("__vdso_time", 0x30),
            sym("weird", 0x38),
        ];
        let mut area = [0u8; 0x60];
        let lookup = |n: &[u8]| match n {
            b"__vdso_a" => Some(0x1122_3344_5566_7788u64),
            b"b" => Some(0x1000 + 0x40 + 5 + 0x100),
            _ => None,
        };
        let st = build_proxy(&mut old, lookup, &mut area, 0x1000).unwrap();
        assert_eq!(
            st,
            ProxyStats {
                redirected: 2,
                syscalls: 1,
                enosys: 1
            }
        );
        assert_eq!(&area[..0x10], &[0u8; 0x10]);
        assert_eq!(
            &area[0x10..0x1c],
            &[0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xff, 0xe0]
        );
        assert_eq!(area[0x1c], 0xcc);
        assert_eq!(&area[0x30..0x38], &[0xb8, 201, 0, 0, 0, 0x0f, 0x05, 0xc3]);
        assert_eq!(
            &area[0x38..0x40],
            &[0x48, 0xc7, 0xc0, 0xda, 0xff, 0xff, 0xff, 0xc3]
        );
        // 0x40..0x60 has room for movabs.
        assert_eq!(&area[0x40..0x42], &[0x48, 0xb8]);
    }

    #[test]
    fn close_entry_points_use_rel32_or_fail() {
        let mut old = [sym("a", 0x10), sym("b", 0x18)];
        let mut area = [0u8; 0x40];
        let near = |_: &[u8]| Some(0x1_0000_1000u64);
        build_proxy(&mut old, near, &mut area, 0x1_0000_0000).unwrap();
        assert_eq!(area[0x10], 0xe9);
        let rel = i32::from_le_bytes(area[0x11..0x15].try_into().unwrap());
        assert_eq!(0x1_0000_0000u64 + 0x10 + 5 + rel as u64, 0x1_0000_1000);
        let far = |_: &[u8]| Some(0x7000_0000_0000u64);
        let e = build_proxy(&mut old, far, &mut area, 0x1000).unwrap_err();
        assert_eq!(e.sym.name(), b"a");
        let mut tight = [sym("a", 0x10), sym("b", 0x13)];
        assert!(build_proxy(&mut tight, |_| None, &mut area, 0x1000).is_err());
        let mut outside = [sym("a", 0x100)];
        assert!(build_proxy(&mut outside, |_| None, &mut area, 0x1000).is_err());
    }

    /// Trampolines built in a fresh mapping really reach the running vDSO,
    /// and the syscall stubs really make the call.
    #[test]
    fn proxy_runs() {
        let (base, img) = running_vdso();
        let mut syms = running_syms();
        let len = img.len();
        // SAFETY: a fresh private anonymous mapping, ours alone.
        let area = unsafe {
            crate::syscall6(
                crate::nr::MMAP,
                0,
                len,
                crate::nr::PROT_READ | crate::nr::PROT_WRITE,
                crate::nr::MAP_PRIVATE | crate::nr::MAP_ANONYMOUS,
                usize::MAX,
                0,
            )
        };
        assert!(!crate::is_err(area));
        let find = |v: &[VdsoSym], n: &[u8]| v.iter().find(|s| s.name() == n).map(|s| s.offset);
        let cg_off = find(&syms, b"__vdso_clock_gettime").unwrap();
        let time_off = find(&syms, b"__vdso_time").unwrap();
        let by_name = syms.clone();
        for force_stubs in [false, true] {
            // SAFETY: the mapping above, len bytes, not aliased elsewhere.
            let bytes = unsafe { core::slice::from_raw_parts_mut(area as *mut u8, len) };
            let st = build_proxy(
                &mut syms,
                |n| {
                    if force_stubs {
                        None
                    } else {
                        find(&by_name, n).map(|o| base + o)
                    }
                },
                bytes,
                area as u64,
            )
            .unwrap();
            assert_eq!(st.redirected > 0, !force_stubs);
            // SAFETY: making our own mapping executable, then calling the
            // trampolines with the C ABI of the vDSO functions they stand for.
            unsafe {
                crate::syscall3(
                    crate::nr::MPROTECT,
                    area as usize,
                    len,
                    crate::nr::PROT_READ | crate::nr::PROT_EXEC,
                );
                let cg: extern "C" fn(i32, *mut [i64; 2]) -> i32 =
                    core::mem::transmute(area as usize + cg_off as usize);
                let tm: extern "C" fn(*mut i64) -> i64 =
                    core::mem::transmute(area as usize + time_off as usize);
                let mut ts = [0i64; 2];
                assert_eq!(cg(1, &mut ts), 0);
                let mut ts2 = [0i64; 2];
                assert_eq!(cg(1, &mut ts2), 0);
                assert!((ts2[0], ts2[1]) >= (ts[0], ts[1]));
                assert_eq!(cg(12345, &mut ts), -22, "an invalid clock gives -EINVAL");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let t = tm(core::ptr::null_mut());
                assert!(
                    (t - now).abs() <= 2,
                    "time() through the proxy: {t} vs {now}"
                );
                crate::syscall3(
                    crate::nr::MPROTECT,
                    area as usize,
                    len,
                    crate::nr::PROT_READ | crate::nr::PROT_WRITE,
                );
            }
        }
        // SAFETY: unmapping our own mapping.
        unsafe { crate::syscall3(crate::nr::MUNMAP, area as usize, len, 0) };
    }
}
