//! The coordinator's per-computation secret and the challenge every
//! connection starts with (docs/security.md).
//!
//! The coordinator makes 32 random bytes at start and writes them, as 64
//! hex digits, to a 0600 file: `$TMPDIR/dmtcp-<uid>/coord-<host>-<port>.secret`
//! (see [`default_path`]), and to the file `--secret-file` /
//! `DMTCP_SECRET_FILE` names, if any (whose secret it uses when the file
//! already exists). On every connection it first sends
//! `{"t":"Challenge","nonce":"<64 hex>"}`; the client answers with
//! HMAC-SHA256(secret, nonce) in the `auth` field of its `Hello`. The
//! secret itself never crosses the network.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// Bytes of a secret and of a nonce.
pub const LEN: usize = 32;

/// How long a client waits for the coordinator's challenge.
pub const CHALLENGE_TIMEOUT_MS: i32 = 20_000;

/// A coordinator's secret. Zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; LEN]);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
        // The zeroes count as read: the stores are not optimised away.
        core::hint::black_box(&mut self.0);
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `N` random bytes from the kernel (getrandom(2)).
pub fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    match dmtcp_sys::getrandom_full(&mut b) {
        0 => Ok(b),
        e => Err(std::io::Error::from_raw_os_error(-e as i32)),
    }
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> std::io::Result<Secret> {
        Ok(Secret(random::<LEN>()?))
    }

    /// As 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// From 64 hex digits (surrounding white space ignored).
    pub fn from_hex(s: &str) -> Option<Secret> {
        unhex::<LEN>(s.trim()).map(Secret)
    }

    /// The answer to the challenge `nonce`: HMAC-SHA256(secret, nonce).
    pub fn answer(&self, nonce: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        m.update(nonce);
        m.finalize().into_bytes().into()
    }

    /// Is `answer` (hex) the right answer to `nonce`? Compared in
    /// constant time.
    pub fn check(&self, nonce: &[u8], answer: &str) -> bool {
        let Some(a) = unhex::<32>(answer) else {
            return false;
        };
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        m.update(nonce);
        m.verify_slice(&a).is_ok()
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Exactly `N` bytes from `2N` hex digits.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = d(s[2 * i])? << 4 | d(s[2 * i + 1])?;
    }
    Some(out)
}

/// This user's directory for coordinator secrets: `$TMPDIR/dmtcp-<uid>`
/// (`/tmp` without TMPDIR).
pub fn user_dir() -> PathBuf {
    let uid = dmtcp_sys::geteuid();
    std::env::temp_dir().join(format!("dmtcp-{uid}"))
}

/// Where the coordinator on `host` listening on `port` writes its secret
/// (on its own machine): `$TMPDIR/dmtcp-<uid>/coord-<host>-<port>.secret`.
pub fn default_path(host: &str, port: u16) -> PathBuf {
    user_dir().join(format!("coord-{host}-{port}.secret"))
}

/// Make [`user_dir`] (0700) and check it is ours and private: in a shared
/// /tmp another user could have made it first, or a symbolic link there.
pub fn make_user_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = user_dir();
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let m = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = dmtcp_sys::geteuid();
    if !m.is_dir() || m.uid() != me || m.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a private directory of this user (mode 0700, owner uid {me}): not used",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Read a secret file (64 hex digits). The file must not be readable by
/// others than its owner.
pub fn read_file(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "{}: a secret file must be private to its owner (chmod 600)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s = Secret::from_hex(&text);
    let mut bytes = text.into_bytes();
    bytes.fill(0);
    core::hint::black_box(&mut bytes);
    s.ok_or_else(|| {
        format!(
            "{}: not a DMTCP secret file (64 hex digits expected)",
            path.display()
        )
    })
}

/// Write `s` to `path`, mode 0600 (through a temporary name, renamed into
/// place, so a reader never sees half of it).
pub fn write_file(path: &Path, s: &Secret) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut line = s.to_hex().into_bytes();
    line.push(b'\n');
    let r = f.write_all(&line).and_then(|_| f.sync_all());
    line.fill(0);
    core::hint::black_box(&mut line);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
}

/// The secret a client of the coordinator at `host:port` uses: the file
/// `explicit` (an option) or `DMTCP_SECRET_FILE` names, else this user's
/// file for that coordinator ([`default_path`], with this machine's name
/// when `host` is this machine). Ok(None): there is no such file.
pub fn find(explicit: Option<&Path>, host: &str, port: u16) -> Result<Option<Secret>, String> {
    let env = std::env::var_os(crate::env::SECRET_FILE).filter(|v| !v.is_empty());
    if let Some(p) = explicit.map(PathBuf::from).or(env.map(PathBuf::from)) {
        return read_file(&p).map(Some);
    }
    let me = crate::hostname();
    let local = matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0" | "") || host == me;
    let name = format!("coord-{}-{port}.secret", if local { &me } else { host });
    // A coordinator of this machine run by another user: its own file
    // first. This user's file of that name is then left from a coordinator
    // of this user that was killed (it could not remove its file) and
    // whose port the other user's coordinator took since.
    let owner = local.then(|| listener_uid(port)).flatten();
    if let Some(uid) = owner.filter(|&u| u != dmtcp_sys::geteuid()) {
        let theirs = std::env::temp_dir()
            .join(format!("dmtcp-{uid}"))
            .join(&name);
        if let Ok(s) = read_file(&theirs) {
            return Ok(Some(s));
        }
    }
    let p = user_dir().join(&name);
    if p.exists() {
        return read_file(&p).map(Some);
    }
    // Another user's coordinator (`--allow-other-user-coordinator`): its
    // file, if this user may read it (root may).
    let others = std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten();
    for d in others {
        let n = d.file_name();
        let is_user_dir = n
            .to_str()
            .and_then(|n| n.strip_prefix("dmtcp-"))
            .is_some_and(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()));
        if is_user_dir {
            if let Ok(s) = read_file(&d.path().join(&name)) {
                return Ok(Some(s));
            }
        }
    }
    Ok(None)
}

/// The uid owning the TCP socket listening on `port` in this network
/// namespace (`/proc/net/tcp` and `tcp6`: local address, state 0A, uid).
fn listener_uid(port: u16) -> Option<u32> {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        text.lines().skip(1).find_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c.len() > 7 && c[1].ends_with(&want) && c[3] == "0A")
                .then(|| c[7].parse().ok())
                .flatten()
        })
    })
}

/// What the coordinator's first line was.
#[derive(Debug)]
pub enum Challenge {
    /// The nonce to answer.
    Nonce([u8; LEN]),
    /// The coordinator turned the connection away (its reason).
    Refused(String),
}

/// Read the coordinator's first message from the connected socket `fd`
/// (byte by byte: nothing after it is taken from the socket), waiting at
/// most [`CHALLENGE_TIMEOUT_MS`]. `who` names the coordinator in errors.
pub fn read_challenge(fd: i32, who: &str) -> Result<Challenge, String> {
    use crate::proto::FromCoord;
    let mut line = Vec::with_capacity(128);
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(CHALLENGE_TIMEOUT_MS as u64);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let n = dmtcp_sys::poll_in(fd, left.as_millis() as i32);
        if n == -(libc::EINTR as isize) {
            continue;
        }
        if n < 0 {
            let e = std::io::Error::from_raw_os_error(-n as i32);
            return Err(format!("the coordinator at {who}: {e}"));
        }
        if n == 0 {
            return Err(format!(
                "the coordinator at {who} did not send its challenge within {} s \
                 (a dmtcp_coordinator of an older version, without authentication, or not a coordinator)",
                CHALLENGE_TIMEOUT_MS / 1000
            ));
        }
        let mut b = [0u8; 1];
        let r = dmtcp_sys::read_full(fd, &mut b);
        if r < 0 {
            let e = std::io::Error::from_raw_os_error(-r as i32);
            return Err(format!("the coordinator at {who}: {e}"));
        }
        if r == 0 {
            return Err(format!(
                "the coordinator at {who} closed the connection before its challenge"
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 4096 {
            return Err(format!(
                "the coordinator at {who} sent no challenge (not a coordinator of this version?)"
            ));
        }
    }
    match crate::proto::decode::<FromCoord>(&line) {
        Ok(FromCoord::Challenge { nonce }) => unhex::<LEN>(&nonce)
            .map(Challenge::Nonce)
            .ok_or_else(|| format!("the coordinator at {who} sent a malformed challenge")),
        Ok(FromCoord::Refused { reason }) => Ok(Challenge::Refused(reason)),
        _ => Err(format!(
            "the coordinator at {who} did not ask for a secret (a dmtcp_coordinator of an older version?)"
        )),
    }
}

/// The error for a coordinator that asked for a secret we do not have.
pub fn no_secret_error(who: &str) -> String {
    format!(
        "the coordinator at {who} asked for a secret this process does not have: \
         set DMTCP_SECRET_FILE (or --secret-file) to the file the coordinator wrote \
         (on its machine: $TMPDIR/dmtcp-<uid>/coord-<host>-<port>.secret, or the file given to its --secret-file)"
    )
}

/// Client side of the start of a connection: read the challenge on `fd`
/// and return the `auth` answer for the `Hello` (hex). `secret` is asked
/// for only when the coordinator sent a challenge.
pub fn answer_challenge(
    fd: i32,
    who: &str,
    secret: impl FnOnce() -> Result<Option<Secret>, String>,
) -> Result<String, String> {
    match read_challenge(fd, who)? {
        Challenge::Refused(reason) => Err(format!("{REFUSED}{reason}")),
        Challenge::Nonce(n) => match secret()? {
            Some(s) => Ok(hex(&s.answer(&n))),
            None => Err(no_secret_error(who)),
        },
    }
}

/// Prefix of the error [`answer_challenge`] gives when the coordinator
/// turned the connection away before its challenge (another user's
/// connection, too many connections).
pub const REFUSED: &str = "the coordinator refused the connection: ";

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (HMAC-SHA256, key "Jefe").
    #[test]
    fn hmac_known_answer() {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn answer_and_check() {
        let s = Secret::generate().unwrap();
        let n = random::<LEN>().unwrap();
        let a = hex(&s.answer(&n));
        assert!(s.check(&n, &a));
        let other = Secret::generate().unwrap();
        assert!(!other.check(&n, &a));
        assert!(!s.check(&n, "00"));
        assert!(!s.check(&n, ""));
        assert_eq!(Secret::from_hex(&s.to_hex()), Some(s.clone()));
        assert_eq!(Secret::from_hex("xyz"), None);
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("dmtcp-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("s.secret");
        let s = Secret::generate().unwrap();
        write_file(&p, &s).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_file(&p).unwrap(), s);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_file(&p).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
