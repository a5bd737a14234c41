//! The ssh client's command line (OpenSSH's option letters): where the
//! destination and the remote command are, so a relay can run the same
//! ssh with another command, or to another host.
#![allow(dead_code)]

/// OpenSSH options that take an argument (`ssh.c`'s getopt string).
const WITH_ARG: &[u8] = b"BbcDEeFIiJLlmOoPpQRSWw";
/// OpenSSH options without an argument.
const FLAGS: &[u8] = b"1246AaCfGgKkMNnqsTtVvXxYy";

/// An ssh command line, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshArgs {
    /// Options before and after the destination, in order (each word as given).
    pub options: Vec<String>,
    /// The destination word (`host`, `user@host`, `ssh://user@host:port`).
    pub dest: String,
    /// The remote command words (joined with spaces, as ssh does).
    pub command: Vec<String>,
    /// `-n`: stdin from /dev/null.
    pub no_stdin: bool,
    /// `-t` was given (the relay runs without a terminal: it is dropped).
    pub tty: bool,
}

impl SshArgs {
    /// Split `args` (without the program name).
    pub fn parse(args: &[String]) -> Result<SshArgs, String> {
        let mut out = SshArgs {
            options: Vec::new(),
            dest: String::new(),
            command: Vec::new(),
            no_stdin: false,
            tty: false,
        };
        let mut i = 0;
        let mut have_dest = false;
        while i < args.len() {
            let a = &args[i];
            if a == "--" {
                i += 1;
                if !have_dest {
                    if i >= args.len() {
                        break;
                    }
                    out.dest = args[i].clone();
                    have_dest = true;
                    i += 1;
                }
                break;
            }
            if !a.starts_with('-') || a == "-" {
                if have_dest {
                    break;
                }
                out.dest = a.clone();
                have_dest = true;
                i += 1;
                continue;
            }
            // A cluster of letters: flags, possibly ending in an option
            // with its argument attached or in the next word.
            let b = a.as_bytes();
            let mut j = 1;
            let mut kept = String::from("-");
            let mut took_next = None;
            while j < b.len() {
                let c = b[j];
                if WITH_ARG.contains(&c) {
                    kept.push(c as char);
                    if j + 1 < b.len() {
                        kept.push_str(&a[j + 1..]);
                    } else {
                        let v = args
                            .get(i + 1)
                            .ok_or_else(|| format!("option -{} needs an argument", c as char))?;
                        took_next = Some(v.clone());
                    }
                    break;
                }
                if !FLAGS.contains(&c) {
                    return Err(format!("unknown option -- {}", c as char));
                }
                match c {
                    b'n' => out.no_stdin = true,
                    b't' => {
                        out.tty = true;
                        j += 1;
                        continue;
                    }
                    _ => {}
                }
                kept.push(c as char);
                j += 1;
            }
            if kept.len() > 1 {
                out.options.push(kept);
            }
            if let Some(v) = took_next {
                out.options.push(v);
                i += 1;
            }
            i += 1;
        }
        if !have_dest {
            return Err("no destination".into());
        }
        out.command = args[i..].to_vec();
        Ok(out)
    }

    /// The remote command as ssh sends it (words joined with spaces).
    pub fn command_string(&self) -> String {
        self.command.join(" ")
    }

    /// The host part of the destination.
    pub fn host(&self) -> String {
        let d = self.dest.strip_prefix("ssh://").unwrap_or(&self.dest);
        let d = d.rsplit_once('@').map(|(_, h)| h).unwrap_or(d);
        let d = if let Some(rest) = d.strip_prefix('[') {
            rest.split(']').next().unwrap_or(rest)
        } else if self.dest.starts_with("ssh://") {
            d.split(':').next().unwrap_or(d)
        } else {
            d
        };
        d.to_string()
    }

    /// The destination with its host replaced by `host` (user and port kept).
    pub fn dest_on(&self, host: &str) -> String {
        let old = self.host();
        match self.dest.rfind(&old) {
            Some(i) => format!("{}{host}{}", &self.dest[..i], &self.dest[i + old.len()..]),
            None => host.to_string(),
        }
    }

    /// Arguments for the real ssh: the options (without `-t`, with `-T`:
    /// the relay's frames need a clean channel), `dest`, then `command` as
    /// one word.
    pub fn argv_for(&self, dest: &str, command: &str) -> Vec<String> {
        let mut v = self.options.clone();
        v.push("-T".into());
        v.push("--".into());
        v.push(dest.to_string());
        v.push(command.to_string());
        v
    }
}

/// `s` quoted for a POSIX shell as one word.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> SshArgs {
        SshArgs::parse(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn options_host_and_command() {
        let a = p(&[
            "-F",
            "/c",
            "-p22",
            "-o",
            "A=B",
            "-nTxq",
            "-i",
            "k",
            "bob@node1",
            "echo",
            "a b",
        ]);
        assert_eq!(
            a.options,
            ["-F", "/c", "-p22", "-o", "A=B", "-nTxq", "-i", "k"]
        );
        assert_eq!(a.dest, "bob@node1");
        assert_eq!(a.host(), "node1");
        assert_eq!(a.command, ["echo", "a b"]);
        assert!(a.no_stdin);
        assert_eq!(a.dest_on("node2"), "bob@node2");
    }

    #[test]
    fn options_after_host_and_tty_dropped() {
        let a = p(&["node1", "-t", "-l", "root", "cat"]);
        assert_eq!(a.options, ["-l", "root"]);
        assert!(a.tty);
        assert_eq!(a.command, ["cat"]);
        let b = p(&["ssh://u@h:2222"]);
        assert_eq!(b.host(), "h");
        assert!(b.command.is_empty());
        assert_eq!(b.dest_on("x"), "ssh://u@x:2222");
        assert!(SshArgs::parse(&["-Z".to_string(), "h".to_string()]).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
        assert_eq!(shell_quote(""), "''");
    }
}
