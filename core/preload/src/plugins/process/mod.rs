//! The internal "process" plugin: the working directory, the umask and
//! the resource limits, saved at checkpoint time and set again at restart.
//! (Signal actions are the engine's: the restart entry needs them before
//! any thread runs.)

use crate::engine::iface::{self as dmtcp, Event, Plugin};
use std::ffi::CString;
use std::sync::Mutex;

#[derive(Default)]
struct ProcSaved {
    cwd: Option<CString>,
    umask: u32,
    rlimits: Vec<(i32, libc::rlimit)>,
}

/// cwd, umask, resource limits and signal actions.
pub struct ProcessPlugin {
    saved: Mutex<ProcSaved>,
}

impl ProcessPlugin {
    pub fn new() -> Self {
        ProcessPlugin {
            saved: Mutex::new(ProcSaved::default()),
        }
    }
}

impl Plugin for ProcessPlugin {
    fn name(&self) -> &'static str {
        "process"
    }
    fn event(&self, ev: Event) {
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            Event::PreCheckpoint => {
                let mut buf = vec![0u8; 4096];
                // SAFETY: getcwd writes into our buffer.
                let p = unsafe { libc::getcwd(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
                s.cwd = if p.is_null() {
                    None
                } else {
                    let n = buf.iter().position(|&c| c == 0).unwrap_or(0);
                    CString::new(&buf[..n]).ok()
                };
                // SAFETY: umask read-and-restore.
                unsafe {
                    let m = libc::umask(0o022);
                    libc::umask(m);
                    s.umask = m;
                }
                s.rlimits.clear();
                for r in 0..16 {
                    let mut l = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    // SAFETY: getrlimit writes our struct.
                    if unsafe { libc::getrlimit(r as _, &mut l) } == 0 {
                        s.rlimits.push((r, l));
                    }
                }
            }
            Event::Restart => {
                if let Some(c) = &s.cwd {
                    // SAFETY: chdir to a NUL-terminated path.
                    if unsafe { libc::chdir(c.as_ptr()) } != 0 {
                        dmtcp::warn(format_args!(
                            "cannot return to directory {c:?}: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                }
                // SAFETY: plain umask/setrlimit calls.
                unsafe {
                    libc::umask(s.umask);
                    for (r, l) in &s.rlimits {
                        if libc::setrlimit(*r as _, l) != 0 {
                            // Raising a hard limit needs privilege: keep what we can.
                            let mut cur = libc::rlimit {
                                rlim_cur: 0,
                                rlim_max: 0,
                            };
                            libc::getrlimit(*r as _, &mut cur);
                            let soft = libc::rlimit {
                                rlim_cur: l.rlim_cur.min(cur.rlim_max),
                                rlim_max: cur.rlim_max,
                            };
                            libc::setrlimit(*r as _, &soft);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
