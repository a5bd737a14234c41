//! The checkpoint thread's loop: it waits for the coordinator, runs one
//! checkpoint round (suspend, plugins, memory plan, image, resume), and is
//! where a restarted process comes back to life.

use super::start::{Config, IDENT, OLD_PID, RESTART_FLAGS, RESTART_INFO_FD};
use super::{capi, coord, fork, incr, lazymem, log, memory, plugin, proctree, threads, writer};
use core::sync::atomic::Ordering::SeqCst;
use dmtcp_common::image::Meta;
use dmtcp_common::proto::{FromCoord, Role, ToCoord};
use dmtcp_sys::restore::RESTART_BRK_SET;
use std::io::Read;
use std::path::PathBuf;

/// Why a plugin failed this process's part of the round under way (see
/// [`fail_round`]).
static ROUND_FAILURE: super::flock::FLock<Option<String>> = super::flock::FLock::new(None);

/// Set while a round's pre-suspend and pre-checkpoint hooks run: the
/// window in which a plugin can still fail the round (`dmtcp_fail_checkpoint`).
static FAILABLE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// A plugin cannot save its state this round (pre-checkpoint, checkpoint
/// thread): this process writes no image, the checkpoint reports `why`,
/// and the resume event follows as after any failed round.
pub fn fail_round(why: String) {
    ROUND_FAILURE.with(|f| {
        f.get_or_insert(why);
    });
}

/// [`fail_round`] for the public interface: only from the hooks of a round
/// before its image is written (pre-suspend, pre-checkpoint). False
/// elsewhere.
pub fn fail_round_from_hook(why: String) -> bool {
    if !FAILABLE.load(SeqCst) {
        return false;
    }
    fail_round(why);
    true
}

/// This process's image of the round, written.
struct Written {
    path: PathBuf,
    bytes: u64,
    crc32: u32,
    header_crc: u32,
}

/// State of the checkpoint thread (lives on its stack, so it is restored
/// along with everything else).
pub(super) struct Ctl {
    pub(super) cfg: Config,
    pub(super) program: String,
    pub(super) argv: Vec<String>,
    pub(super) uniq_id: String,
    pub(super) comp_id: String,
    pub(super) generation: u32,
    pub(super) num_peers: u32,
    pub(super) slot: &'static threads::Slot,
    /// The last forked writer, until it is reaped.
    pub(super) writer_pid: Option<i32>,
    /// Where this process's last image is once its generation is
    /// committed (the base of the next incremental image; None after a
    /// restart, whose first image is full).
    pub(super) last_image: Option<PathBuf>,
}

/// How this process's part of a round ended: its image written (where,
/// its size and checksums), handed to a forked writer, or failed (why).
enum Captured {
    Written(Written),
    Forked(i32),
    Failed(String),
}

impl Ctl {
    pub(super) fn run(&mut self) {
        loop {
            if !coord::with(|c| c.buffered()).unwrap_or(false) {
                let mut fds = [
                    libc::pollfd {
                        fd: coord::COORD_FD,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: capi::WAKE_FD.load(SeqCst),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    // The page server of a lazy restore (-1: none, which
                    // poll skips): its end is watched, see lazymem.
                    libc::pollfd {
                        fd: lazymem::LAZY_FD.load(SeqCst),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: poll on our three fds.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
                if n < 0 {
                    continue;
                }
                if fds[2].revents != 0 {
                    lazymem::server_spoke();
                }
                if fds[1].revents & libc::POLLIN != 0 && capi::take_request() {
                    coord::send(&ToCoord::RequestCkpt);
                }
                if fds[0].revents == 0 {
                    continue;
                }
            }
            match coord::recv() {
                Ok(Some(FromCoord::DoCheckpoint {
                    generation,
                    ckpt_dir,
                    num_peers,
                    fork,
                })) => {
                    self.generation = generation;
                    self.num_peers = num_peers;
                    self.reap_writer();
                    // The forked writer's own connection, made before the
                    // program is suspended (not part of the pause).
                    // Forked if the node has the memory for it (asked
                    // before, not during, the pause).
                    use super::forkmem::{self, Mode};
                    let mode = self.cfg.forked;
                    let may_fork = fork
                        && mode != Mode::Off
                        && match forkmem::reserve(generation, mode == Mode::Auto) {
                            Ok(()) => true,
                            Err(why) => {
                                forkmem::refused(&why);
                                false
                            }
                        };
                    let link = if may_fork {
                        self.open_writer_link()
                    } else {
                        None
                    };
                    self.checkpoint(ckpt_dir.map(PathBuf::from), link);
                    // The writer (if one was forked) holds its own copy.
                    forkmem::release();
                }
                Ok(Some(FromCoord::Kill)) => dmtcp_sys::exit_group(0),
                Ok(Some(FromCoord::Settled { generation, commit })) => {
                    capi::settled(generation, commit)
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    log::warn(format_args!(
                        "lost the connection to the coordinator; no more checkpoints"
                    ));
                    // Nobody will say how a forked round ended.
                    capi::settled(0, false);
                    return;
                }
            }
        }
    }

    /// Wait for a barrier; Kill ends the process.
    fn barrier(&mut self, name: &str) -> bool {
        log::debug(format_args!("barrier {name}"));
        let ok = coord::barrier(name);
        log::debug(format_args!(
            "barrier {name}: {}",
            if ok { "passed" } else { "round given up" }
        ));
        ok
    }

    /// Reap the last forked writer if it has exited (it has no exit
    /// signal: only a wait with `__WCLONE` sees it, never the program's).
    fn reap_writer(&mut self) {
        if let Some(pid) = self.writer_pid {
            let mut st = 0;
            // SAFETY: waitpid on our own child; WNOHANG never blocks.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WCLONE) };
            if r != 0 {
                self.writer_pid = None;
            }
        }
    }

    /// Connect the forked writer's link to the coordinator (at
    /// [`writer::WRITER_FD`]): a `Hello` as `Role::Writer` naming this
    /// process and the round. None (with a warning) if that fails: the
    /// image is then written with the program suspended.
    fn open_writer_link(&self) -> Option<i32> {
        let fd = writer::WRITER_FD;
        let opened = (|| -> Result<(), String> {
            // At the library's own number before it is even connected:
            // the program runs, and may still use the number a socket is
            // first given as one of its own (a restarted program's fd
            // that could not be put back); it must never read what the
            // coordinator says to us.
            super::start::connect_coordinator_at(&self.cfg.host, self.cfg.port, fd)
                .map_err(|e| e.to_string())?;
            let auth = super::secret::answer(fd, &self.cfg.host, self.cfg.port)?;
            let hello = ToCoord::Hello {
                role: Role::Writer,
                pid: dmtcp_sys::getpid(),
                hostname: dmtcp_common::hostname(),
                program: self.program.clone(),
                uniq_id: self.uniq_id.clone(),
                restarting: false,
                comp_id: Some(self.comp_id.clone()),
                generation: self.generation,
                num_peers: 0,
                auth: Some(auth),
            };
            dmtcp_common::proto::send(&mut coord::Fd(fd), &hello).map_err(|e| e.to_string())?;
            // One byte at a time: nothing after the welcome is taken.
            let mut r = std::io::BufReader::with_capacity(1, coord::Fd(fd));
            match dmtcp_common::proto::recv(&mut r) {
                Ok(Some(FromCoord::Welcome { .. })) => Ok(()),
                Ok(Some(FromCoord::Refused { reason })) => Err(reason),
                other => Err(format!("no welcome ({other:?})")),
            }
        })();
        match opened {
            Ok(()) => Some(fd),
            Err(e) => {
                log::warn(format_args!(
                    "cannot connect the forked image writer to the coordinator ({e}): this image is written with the program suspended"
                ));
                close_writer_link();
                None
            }
        }
    }

    fn checkpoint(&mut self, dir_override: Option<PathBuf>, mut link: Option<i32>) {
        // Pages a lazy restore has still to fill come in first (the image
        // is written from this memory).
        super::lazymem::fill_all();
        // The previous generation's image, read before anything is
        // suspended (this allocates and reads a file).
        let incremental = self.cfg.full_every != 1;
        let prev = if incremental {
            let top = dir_override
                .clone()
                .unwrap_or_else(|| PathBuf::from(capi::dir()));
            self.last_image
                .as_deref()
                .and_then(|p| incr::load(p, &top, &self.uniq_id, self.cfg.full_every))
        } else {
            None
        };
        log::info(format_args!(
            "checkpoint of generation {}: suspending{}",
            self.generation,
            if prev.is_some() {
                " (incremental image)"
            } else {
                ""
            }
        ));
        capi::begin_checkpoint();
        plugin::set_round(self.generation, false);
        FAILABLE.store(true, SeqCst);
        plugin::run(plugin::Event::PreSuspend);
        threads::suspend_all();
        // A child's new program (vfork, posix_spawn, system, popen and
        // exec) joins this round before this process says it is suspended.
        fork::wait_newcomers(&self.cfg.host, self.cfg.port);
        // More threads than the library can record: this process cannot be
        // imaged, but it still goes through every barrier of the round (the
        // other processes wait for it there) and fails the checkpoint there.
        let overflow = threads::OVERFLOW.load(SeqCst);
        if !self.barrier("suspended") {
            if link.is_some() {
                close_writer_link();
            }
            FAILABLE.store(false, SeqCst);
            ROUND_FAILURE.with(|f| f.take());
            // The round is over before the image (the coordinator is gone):
            // plugins that let go of something at pre-suspend take it back.
            plugin::run(plugin::Event::Resume);
            capi::end_checkpoint(false, false, self.generation);
            threads::resume_all();
            return;
        }
        // Who really took part: processes that joined the round late (forked
        // children) count, processes that exited before suspending do not.
        let n = coord::LAST_COUNT.load(SeqCst);
        if n > 0 {
            self.num_peers = n;
        }
        super::signals::save_sigactions();
        plugin::run(plugin::Event::PreCheckpoint);
        OLD_PID.store(dmtcp_sys::getpid(), SeqCst);
        FAILABLE.store(false, SeqCst);
        let failure = ROUND_FAILURE.with(|f| f.take());
        let mut planned = if let Some(why) = failure {
            Err(std::io::Error::other(why))
        } else if overflow {
            Err(std::io::Error::other(format!(
                "more than {} threads: this process cannot be checkpointed",
                threads::MAX_THREADS
            )))
        } else if super::start::NO_WINDOW.load(SeqCst) {
            Err(std::io::Error::other(
                "the restorer window was not free at start-up: this process cannot be checkpointed",
            ))
        } else {
            memory::plan()
        };
        for _ in 0..3 {
            match &planned {
                Ok(p) if writer::prepare(p.items.len()) => planned = memory::plan(),
                _ => break,
            }
        }
        let mut plan = match planned {
            Ok(p) => p,
            Err(e) => {
                if link.is_some() {
                    close_writer_link();
                }
                return self.end_round(Captured::Failed(e.to_string()));
            }
        };
        if link.is_some() {
            if let Some(why) = memory::fork_unsafe(&plan) {
                log::warn(format_args!(
                    "forked checkpointing is not possible here ({why}): this image is written with the program suspended"
                ));
                close_writer_link();
                link = None;
            } else {
                // Shared memory first: the forked writer writes it before
                // the program may change it again.
                plan.items.sort_by_key(|it| !writer::is_shared(it));
            }
        }
        let dir = dir_override.unwrap_or_else(|| PathBuf::from(capi::dir()));
        let name = dmtcp_common::image::image_name(&self.program, &self.uniq_id);
        let mut meta = Meta {
            program: self.program.clone(),
            argv: self.argv.clone(),
            hostname: dmtcp_common::hostname(),
            pid: super::vpid::to_virt(dmtcp_sys::getpid()),
            uniq_id: self.uniq_id.clone(),
            comp_id: self.comp_id.clone(),
            generation: self.generation,
            num_peers: self.num_peers,
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            dmtcp_version: dmtcp_common::VERSION.into(),
            entry: super::restart::dmtcp_restart_entry as *const () as usize as u64,
            entry_stack_top: super::restart::entry_stack_top(),
            special: plan.special,
            mm: memory::mm_layout(),
            areas: Vec::new(),
            coord_host: self.cfg.host.clone(),
            coord_port: self.cfg.port,
            ckpt_dir: dir.display().to_string(),
            tree: proctree::capture(threads::slot_tids()),
            cpu_flags: super::start::cpu_flags(),
            vdso_syms: super::vdso::entry_points(plan.special[2]),
            sources: Vec::new(),
            since_full: 0,
            lazy_protocol: dmtcp_common::image::LAZY_PROTOCOL,
        };
        // Into the directory of this generation, which the coordinator
        // commits once every process has written its image.
        let gen_dir = dir.join(dmtcp_common::generation::partial_name(
            &self.comp_id,
            self.generation,
        ));
        // Which pages were written since the last capture (and write-
        // protect them again): those not written need not be read.
        let clean = if incremental {
            super::dirty::begin(&plan, self.generation, prev.as_ref().map(|p| p.generation))
        } else {
            None
        };
        let outcome = writer::write_image(
            &gen_dir,
            &name,
            &plan,
            &mut meta,
            writer::WriteOpts {
                compress: self.cfg.gzip,
                incremental,
                prev: prev.as_ref(),
                clean: clean.as_ref(),
            },
            self.slot,
            link,
        );
        if matches!(
            outcome,
            writer::Outcome::Written { .. } | writer::Outcome::Forked { .. }
        ) {
            self.last_image = Some(
                dir.join(dmtcp_common::generation::dir_name(
                    &self.comp_id,
                    self.generation,
                ))
                .join(&name),
            );
        }
        if writer::in_forked_child() {
            child_report(outcome);
        }
        if link.is_some() {
            // The child has its copy (or there is no child).
            close_writer_link();
        }
        match outcome {
            writer::Outcome::Written {
                path,
                bytes,
                crc32,
                header_crc,
            } => self.end_round(Captured::Written(Written {
                path,
                bytes,
                crc32,
                header_crc,
            })),
            writer::Outcome::Failed(msg) => self.end_round(Captured::Failed(msg)),
            writer::Outcome::Forked { pid } => {
                self.writer_pid = Some(pid);
                self.end_round(Captured::Forked(pid))
            }
            writer::Outcome::Restarted => {
                self.writer_pid = None;
                self.last_image = None;
                self.after_restart()
            }
        }
    }

    /// The rest of a round once this process's image is written (where,
    /// its size and checksums), handed to a forked writer, or not written
    /// (why): report it; at the "checkpointed" barrier learn whether the
    /// coordinator committed the generation (every process wrote its
    /// image), or throw the image away (a forked writer learns that
    /// itself, later); "committed"; the resume hooks; "resumed" (until
    /// every participant gets there the coordinator keeps newcomers out of
    /// the round's barriers and holds new checkpoint requests back); then
    /// the threads go on.
    fn end_round(&mut self, captured: Captured) {
        plugin::run(plugin::Event::Written);
        match &captured {
            Captured::Written(w) => {
                coord::send(&ToCoord::CkptDone {
                    image: w.path.display().to_string(),
                    bytes: w.bytes,
                    error: None,
                    crc32: w.crc32,
                    header_crc: w.header_crc,
                });
            }
            Captured::Failed(msg) => {
                log::error(format_args!("checkpoint failed: {msg}"));
                coord::send(&ToCoord::CkptDone {
                    image: String::new(),
                    bytes: 0,
                    error: Some(msg.clone()),
                    crc32: 0,
                    header_crc: 0,
                });
            }
            Captured::Forked(_) => {}
        }
        let reached = self.barrier("checkpointed");
        let mut ok = reached && coord::LAST_COMMIT.load(SeqCst);
        match &captured {
            Captured::Written(w) => {
                if !ok {
                    writer::discard(&w.path);
                } else if let Err(e) = writer::commit_unseen(&w.path) {
                    log::error(format_args!("checkpoint failed: {e}"));
                    ok = false;
                }
                if ok {
                    log::info(format_args!(
                        "checkpoint of generation {}: {} written ({} bytes), committed",
                        self.generation,
                        w.path.display(),
                        w.bytes
                    ));
                }
            }
            Captured::Forked(pid) => {
                // Captured; the generation commits when the writer is done.
                ok = reached;
                if ok {
                    capi::forked_round(self.generation);
                }
                log::info(format_args!(
                    "checkpoint of generation {}: state captured, image written by forked writer {pid}",
                    self.generation
                ));
            }
            Captured::Failed(_) => ok = false,
        }
        if !ok {
            log::info(format_args!(
                "checkpoint of generation {}: not committed",
                self.generation
            ));
        }
        let committed = reached && self.barrier("committed");
        plugin::run(plugin::Event::Resume);
        if committed {
            self.barrier("resumed");
        }
        capi::end_checkpoint(ok, false, self.generation);
        threads::resume_all();
    }

    fn after_restart(&mut self) {
        threads::reregister_rseq(self.slot.fs.load(SeqCst));
        // Perhaps another CPU: the incremental hash's code is chosen anew.
        super::xxh3::init();
        // A new address space: nothing of it is tracked yet.
        super::dirty::after_restart();
        coord::with(|c| c.reset());
        let info_fd = RESTART_INFO_FD.load(SeqCst);
        if info_fd >= 0 {
            // Room for all of it at once: a grown buffer would leave
            // copies of the secret in freed heap blocks (in the next image).
            let mut avail: libc::c_int = 0;
            // SAFETY: FIONREAD writes an int.
            unsafe { libc::ioctl(info_fd, libc::FIONREAD, &mut avail) };
            let mut s = String::with_capacity(avail.max(0) as usize + 4096);
            let _ = coord::Fd(info_fd).read_to_string(&mut s);
            super::fdguard::close_own(info_fd);
            let parsed = serde_json::from_str::<serde_json::Value>(&s);
            // SAFETY: zeroes are valid UTF-8 (the text held the secret).
            unsafe { s.as_bytes_mut().fill(0) };
            if let Ok(mut v) = parsed {
                // The coordinator's secret: into its page, out of the
                // heap (whose freed blocks are in the next image).
                if let Some(serde_json::Value::String(mut hex)) =
                    v.get_mut("secret").map(|x| x.take())
                {
                    if let Some(sec) = dmtcp_common::auth::Secret::from_hex(&hex) {
                        super::secret::set(&sec);
                    }
                    // SAFETY: zeroes are valid UTF-8.
                    unsafe { hex.as_bytes_mut().fill(0) };
                }
                if let Some(h) = v["coord_host"].as_str() {
                    self.cfg.host = h.into();
                }
                if let Some(p) = v["coord_port"].as_u64() {
                    self.cfg.port = p as u16;
                }
                if let Some(a) = v["shared_files"].as_array() {
                    let fds: Vec<i32> = a
                        .iter()
                        .filter_map(|x| x.as_i64().map(|n| n as i32))
                        .collect();
                    super::fds::set_installed_by_restart(fds);
                }
                // Without a pid namespace: the job's pids then and now.
                match v["pid_map"].as_array() {
                    Some(m) => {
                        let pairs: Vec<(i32, i32)> = m
                            .iter()
                            .filter_map(|p| {
                                Some((p.get(0)?.as_i64()? as i32, p.get(1)?.as_i64()? as i32))
                            })
                            .collect();
                        super::vpid::set(&pairs);
                    }
                    None => super::vpid::clear(),
                }
                proctree::ROOT_CANDIDATE.store(v["job_root"].as_bool().unwrap_or(false), SeqCst);
                // Generations of this computation already in the
                // checkpoint directories (restarted from an older one):
                // the next checkpoint is numbered above them.
                if let Some(g) = v["generation"].as_u64() {
                    self.generation = self.generation.max(g as u32);
                }
                if let Some(d) = v["ckpt_dir"].as_str() {
                    self.cfg.ckpt_dir = PathBuf::from(d);
                    capi::set_dir(d);
                }
            }
        }
        // This process's threads whose tids changed (no pid namespace, or
        // clone3 could not choose them).
        super::restart::wait_recreated();
        super::vpid::add(&threads::changed_tids());
        if RESTART_FLAGS.load(SeqCst) & RESTART_BRK_SET == 0 {
            log::warn(format_args!("the kernel refused PR_SET_MM_MAP: the heap cannot grow in place after restart (malloc falls back to mmap)"));
        }
        // The connection dmtcp_restart made starts with the challenge.
        let auth = match super::secret::answer(coord::COORD_FD, &self.cfg.host, self.cfg.port) {
            Ok(a) => a,
            Err(e) => {
                log::error(format_args!(
                    "cannot rejoin the coordinator after restart: {e}"
                ));
                dmtcp_sys::exit_group(1);
            }
        };
        let hello = ToCoord::Hello {
            role: Role::Worker,
            pid: dmtcp_sys::getpid(),
            hostname: dmtcp_common::hostname(),
            program: self.program.clone(),
            uniq_id: self.uniq_id.clone(),
            restarting: true,
            comp_id: Some(self.comp_id.clone()),
            generation: self.generation,
            num_peers: self.num_peers,
            auth: Some(auth),
        };
        let welcome = if coord::send(&hello) {
            coord::recv()
        } else {
            Ok(None)
        };
        match welcome {
            Ok(Some(FromCoord::Welcome { .. })) => {}
            Ok(Some(FromCoord::Refused { reason })) => {
                log::error(format_args!(
                    "the coordinator refused the restarted process: {reason}"
                ));
                dmtcp_sys::exit_group(1);
            }
            other => {
                log::error(format_args!(
                    "no welcome from the coordinator after restart ({other:?})"
                ));
                dmtcp_sys::exit_group(1);
            }
        }
        capi::open_wake_fd();
        capi::init_sections();
        super::fdguard::fill_placeholders();
        capi::set_coordinator(&self.cfg.host, self.cfg.port);
        fork::MY_PID.store(dmtcp_sys::getpid(), SeqCst);
        let cfg = self.cfg.clone();
        IDENT.with(|i| {
            if let Some(i) = i.as_mut() {
                i.cfg = cfg;
            }
        });
        proctree::after_restart();
        super::vdso::auxv_after_restart();
        plugin::set_round(self.generation, true);
        plugin::run(plugin::Event::Restart);
        self.barrier("restarted");
        plugin::run(plugin::Event::Restarted);
        log::info(format_args!(
            "restarted from generation {} (coordinator {}:{})",
            self.generation, self.cfg.host, self.cfg.port
        ));
        capi::end_checkpoint(true, true, self.generation);
        threads::resume_all();
        // Forked children connect to addresses resolved in advance (a child
        // of a threaded program must not resolve names): those of the
        // coordinator of now, resolved with the program running again
        // (resolving allocates with the program's malloc).
        super::start::resolve_coordinator(&self.cfg.host, self.cfg.port);
    }
}

/// Put the forked writer's link number back to a placeholder.
fn close_writer_link() {
    super::fdguard::close_own(writer::WRITER_FD);
    super::fdguard::fill_placeholders();
}

/// In the forked writer, its image done (or failed): report it on its own
/// connection, wait for the round's verdict, commit or remove the image
/// as a process of the round would, and exit. Nothing of the program runs
/// here, and nothing it would see (no exit handlers, no signal to it).
fn child_report(outcome: writer::Outcome) -> ! {
    let link = writer::WRITER_FD;
    let (done, path) = match outcome {
        writer::Outcome::Written {
            path,
            bytes,
            crc32,
            header_crc,
        } => (
            ToCoord::CkptDone {
                image: path.display().to_string(),
                bytes,
                error: None,
                crc32,
                header_crc,
            },
            Some(path),
        ),
        writer::Outcome::Failed(msg) => {
            log::error(format_args!(
                "forked image writer: checkpoint failed: {msg}"
            ));
            (
                ToCoord::CkptDone {
                    image: String::new(),
                    bytes: 0,
                    error: Some(msg),
                    crc32: 0,
                    header_crc: 0,
                },
                None,
            )
        }
        _ => dmtcp_sys::exit_group(1),
    };
    if dmtcp_common::proto::send(&mut coord::Fd(link), &done).is_err() {
        if let Some(p) = &path {
            writer::discard(p);
        }
        dmtcp_sys::exit_group(1);
    }
    let mut r = std::io::BufReader::new(coord::Fd(link));
    let commit = loop {
        match dmtcp_common::proto::recv(&mut r) {
            Ok(Some(FromCoord::BarrierDone { name, commit, .. })) if name == "checkpointed" => {
                break commit
            }
            Ok(Some(_)) => continue,
            _ => break false,
        }
    };
    if let Some(p) = path {
        if !commit {
            writer::discard(&p);
        } else if let Err(e) = writer::commit_unseen(&p) {
            log::error(format_args!("forked image writer: {e}"));
        }
    }
    dmtcp_sys::exit_group(0)
}
