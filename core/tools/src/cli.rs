//! The tools' command lines, on clap: what every tool shares (DMTCP's
//! conventions, the coordinator's address, the hidden generators of man
//! pages and shell completions), DMTCP's spellings that clap cannot take
//! as they are, and DMTCP's exit status 1 for bad usage (clap's is 2).

use crate::client::{CoordAddr, CoordMode};
use clap::error::ErrorKind;
use clap::{value_parser, Arg, ArgAction, ArgMatches, Command, ValueHint};
use clap_complete::Shell;
use std::path::PathBuf;

/// `--version` prints `<tool> (DMTCP-rs) <version>`.
const VERSION: &str = concat!("(DMTCP-rs) ", env!("CARGO_PKG_VERSION"));

/// Help heading of the coordinator options.
pub const COORD: &str = "Connecting to the coordinator";
/// Help heading of the options at the end of every tool's list.
pub const OTHER: &str = "Other";

const GEN_MAN: &str = "generate_man";
const GEN_COMPLETIONS: &str = "generate_completions";

/// A tool's command line with DMTCP's conventions: `-h` is not help (it is
/// the coordinator's host in the tools that connect to one); help is
/// `--help` and the version `--version`; an option given twice takes its
/// last value, as DMTCP's parsers do. Finish it with [`finish`].
pub fn tool(name: &'static str, about: &'static str) -> Command {
    Command::new(name)
        .version(VERSION)
        .about(about)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args_override_self(true)
}

/// Add `--help`, `--version` (under [`OTHER`], last) and the hidden
/// `--generate-man DIR` and `--generate-completions SHELL`; wrap the
/// options' help texts (see [`wrap`]).
pub fn finish(cmd: Command) -> Command {
    cmd.mut_args(
        |a| match a.get_help().map(|h| wrap(&h.to_string(), HELP_WIDTH)) {
            Some(help) => a.help(help),
            None => a,
        },
    )
    .next_help_heading(OTHER)
    .arg(
        Arg::new("help")
            .long("help")
            .action(ArgAction::Help)
            .help("Print this message and exit"),
    )
    .arg(
        Arg::new("version")
            .long("version")
            .action(ArgAction::Version)
            .help("Print the version and exit"),
    )
    .arg(
        Arg::new(GEN_MAN)
            .long("generate-man")
            .value_name("DIR")
            .value_parser(value_parser!(PathBuf))
            .value_hint(ValueHint::DirPath)
            .exclusive(true)
            .hide(true),
    )
    .arg(
        Arg::new(GEN_COMPLETIONS)
            .long("generate-completions")
            .value_name("SHELL")
            .value_parser(value_parser!(Shell))
            .exclusive(true)
            .hide(true),
    )
}

/// Help texts are wrapped at this width: clap does not wrap them without
/// a terminal-size dependency, and the widest option column is 38 wide.
const HELP_WIDTH: usize = 56;

/// `text` with its words wrapped at `width` columns.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for w in text.split_whitespace() {
        if line > 0 && line + 1 + w.len() > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(w);
        line += w.len();
    }
    out
}

/// Parse a tool's arguments (`args[0]` is the program name). `Err` holds
/// the exit status when the tool is done already: 0 after `--help`,
/// `--version` or a generated man page or completion script, 1 after bad
/// usage (the error, naming the option, and the usage on stderr).
pub fn parse(cmd: &mut Command, args: Vec<String>) -> Result<ArgMatches, i32> {
    let m = cmd
        .try_get_matches_from_mut(args)
        .map_err(|e| report(cmd, &e))?;
    if let Some(dir) = m.get_one::<PathBuf>(GEN_MAN) {
        return Err(write_man(cmd, dir));
    }
    if let Some(shell) = m.get_one::<Shell>(GEN_COMPLETIONS) {
        let name = cmd.get_name().to_string();
        clap_complete::generate(*shell, cmd, name, &mut std::io::stdout());
        return Err(0);
    }
    Ok(m)
}

/// Bad usage found after parsing (`msg`): reported as clap reports its
/// own, with the usage; returns the exit status, 1.
pub fn usage_error(cmd: &mut Command, msg: impl std::fmt::Display) -> i32 {
    let e = cmd.error(ErrorKind::MissingRequiredArgument, msg);
    report(cmd, &e)
}

fn report(cmd: &Command, e: &clap::Error) -> i32 {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let text = e.render().to_string();
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            0
        }
        _ => {
            // Every error shows the usage (clap leaves it out of some).
            let mut text = e.render().to_string();
            if !text.contains("Usage:") {
                let more = text.find("\nFor more information").unwrap_or(text.len());
                let usage = cmd.clone().render_usage().to_string();
                text.insert_str(more, &format!("\n{usage}\n"));
            }
            eprint!("{}: {text}", cmd.get_name());
            1
        }
    }
}

/// Write `<dir>/<tool>.1`.
fn write_man(cmd: &Command, dir: &std::path::Path) -> i32 {
    let path = dir.join(format!("{}.1", cmd.get_name()));
    let mut page = Vec::new();
    let r = clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .and_then(|()| std::fs::write(&path, page));
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: cannot write {}: {e}", cmd.get_name(), path.display());
            1
        }
    }
}

/// Rewrite the words of `args` that `respell` maps (DMTCP spellings clap
/// cannot take as they are) into ones `cmd` knows. Values of `cmd`'s
/// options are left alone, and so is everything after `--` and, with
/// `operands_end` (a program and its arguments follow), from the first
/// word that is not an option on.
pub fn respell(
    cmd: &Command,
    args: Vec<String>,
    operands_end: bool,
    respell: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    out.extend(it.next());
    while let Some(w) = it.next() {
        if w == "--" || operands_end && (w == "-" || !w.starts_with('-')) {
            out.push(w);
            break;
        }
        let w = respell(&w).unwrap_or(w);
        let value_follows = takes_separate_value(cmd, &w);
        out.push(w);
        if value_follows {
            out.extend(it.next());
        }
    }
    out.extend(it);
    out
}

/// `cmd`'s option `--<long>` (by its name or an alias).
pub fn long_option<'a>(cmd: &'a Command, long: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|v| v.contains(&long))
    })
}

/// Whether the option word `w` of `cmd` takes its value from the next word
/// (`--port N`, `-p N`, `-jp N`, but not `--port=N` or `-pN`).
fn takes_separate_value(cmd: &Command, w: &str) -> bool {
    let takes = |a: &Arg| a.get_action().takes_values();
    if let Some(long) = w.strip_prefix("--") {
        return long_option(cmd, long).is_some_and(takes);
    }
    let Some(shorts) = w.strip_prefix('-') else {
        return false;
    };
    for (i, c) in shorts.char_indices() {
        let Some(a) = cmd.get_arguments().find(|a| {
            a.get_short() == Some(c) || a.get_all_short_aliases().is_some_and(|v| v.contains(&c))
        }) else {
            return false;
        };
        if takes(a) {
            return i + c.len_utf8() == shorts.len();
        }
    }
    false
}

/// `-h/--coord-host` and `-p/--coord-port` (also `--host`, `--port`,
/// `-pN`), as every tool that talks to a coordinator has them.
pub fn host_port_args(cmd: Command, port_help: &'static str) -> Command {
    cmd.arg(
        Arg::new("coord_host")
            .short('h')
            .long("coord-host")
            .alias("host")
            .value_name("HOST")
            .value_hint(ValueHint::Hostname)
            .help("Hostname of the coordinator (env DMTCP_COORD_HOST, default localhost)"),
    )
    .arg(coord_port(port_help))
    .arg(secret_file(SECRET_FILE_HELP))
}

/// The coordinator options of dmtcp_launch and dmtcp_restart, under
/// [`COORD`]: host and port, `--port-file`, `-j/--join-coordinator`,
/// `--new-coordinator`, `--any-coordinator` (the last of these three
/// counts), `--allow-other-user-coordinator`, `-i/--interval`.
pub fn coord_args(cmd: Command, port_help: &'static str, interval_help: &'static str) -> Command {
    let mode = |id: &'static str, long: &'static str, help: &'static str| {
        let others: Vec<&str> = ["join", "new_coordinator", "any_coordinator"]
            .into_iter()
            .filter(|o| *o != id)
            .collect();
        Arg::new(id)
            .long(long)
            .action(ArgAction::SetTrue)
            .overrides_with_all(others)
            .help(help)
    };
    host_port_args(cmd.next_help_heading(COORD), port_help)
        .arg(
            Arg::new("port_file")
                .long("port-file")
                .value_name("FILE")
                .value_parser(value_parser!(PathBuf))
                .value_hint(ValueHint::FilePath)
                .help("File to write the port number to (with --new-coordinator and -p 0)"),
        )
        .arg(
            mode(
                "join",
                "join-coordinator",
                "Join an existing coordinator; fail if there is none",
            )
            .short('j')
            .alias("join"),
        )
        .arg(mode(
            "new_coordinator",
            "new-coordinator",
            "Start a new coordinator, fail if one runs on the port",
        ))
        .arg(mode(
            "any_coordinator",
            "any-coordinator",
            "Join a running coordinator, or start one (default)",
        ))
        .arg(
            Arg::new("allow_other_user_coordinator")
                .long("allow-other-user-coordinator")
                .action(ArgAction::SetTrue)
                .help(
                    "Join a coordinator that another user runs on this machine (refused by default)",
                ),
        )
        .arg(interval(interval_help))
}

/// The coordinator's address as the environment and [`coord_args`] give it.
pub fn coord_addr(m: &ArgMatches) -> CoordAddr {
    let mut a = CoordAddr::from_env();
    if let Some(h) = m.get_one::<String>("coord_host") {
        a.host = h.clone();
    }
    if let Some(p) = m.get_one::<u16>("coord_port") {
        a.port = *p;
    }
    a.port_file = m.get_one::<PathBuf>("port_file").cloned();
    if m.get_flag("join") {
        a.mode = CoordMode::Join;
    } else if m.get_flag("new_coordinator") {
        a.mode = CoordMode::New;
    }
    a.allow_other_user = m.get_flag("allow_other_user_coordinator");
    if let Some(i) = m.get_one::<u32>("interval") {
        a.interval = Some(*i);
    }
    a
}

/// `-p/--coord-port PORT` (also `--port`, `-pN`).
pub fn coord_port(help: &'static str) -> Arg {
    Arg::new("coord_port")
        .short('p')
        .long("coord-port")
        .alias("port")
        .value_name("PORT")
        .value_parser(value_parser!(u16))
        .value_hint(ValueHint::Other)
        .help(help)
}

/// `-i/--interval SECS` (also `-iN`).
pub fn interval(help: &'static str) -> Arg {
    Arg::new("interval")
        .short('i')
        .long("interval")
        .value_name("SECS")
        .value_parser(value_parser!(u32))
        .value_hint(ValueHint::Other)
        .help(help)
}

/// A flag (no value).
pub fn flag(id: &'static str, long: &'static str, help: &'static str) -> Arg {
    Arg::new(id)
        .long(long)
        .action(ArgAction::SetTrue)
        .help(help)
}

/// `-v/--verbose`, counted: notes, then debug detail, on stderr and in a
/// log file per process (docs/user-guide.md, "Logs"; env DMTCP_LOG).
pub fn verbose() -> Arg {
    Arg::new("verbose")
        .short('v')
        .long("verbose")
        .action(ArgAction::Count)
        .help(
            "More output: debug detail on stderr and a log file per process (env DMTCP_LOG=LEVEL)",
        )
}

/// `-q/--quiet`, counted.
pub fn quiet(help: &'static str) -> Arg {
    Arg::new("quiet")
        .short('q')
        .long("quiet")
        .action(ArgAction::Count)
        .help(help)
}

/// `--secret-file FILE`: the coordinator's secret (docs/security.md).
pub fn secret_file(help: &'static str) -> Arg {
    Arg::new("secret_file")
        .long("secret-file")
        .value_name("FILE")
        .value_parser(value_parser!(std::path::PathBuf))
        .value_hint(ValueHint::FilePath)
        .help(help)
}

/// The `--secret-file` given, else `DMTCP_SECRET_FILE` (absolute: a
/// coordinator may change its directory when it becomes a daemon).
pub fn secret_file_of(m: &clap::ArgMatches) -> Option<std::path::PathBuf> {
    m.get_one::<std::path::PathBuf>("secret_file")
        .cloned()
        .or_else(|| {
            std::env::var_os(dmtcp_common::env::SECRET_FILE)
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from)
        })
        .map(|p| std::path::absolute(&p).unwrap_or(p))
}

/// `--secret-from-stdin` (hidden): the coordinator's secret is the first
/// line of standard input (the remote side of an ssh session, the restart
/// script's remote hosts).
pub fn secret_from_stdin() -> Arg {
    flag(
        "secret_from_stdin",
        "secret-from-stdin",
        "Read the coordinator's secret (64 hex digits) from the first line of standard input",
    )
    .hide(true)
}

/// The help of the tools' `--secret-file`.
pub const SECRET_FILE_HELP: &str = "Answer the coordinator's challenge with the secret in FILE \
     (env DMTCP_SECRET_FILE; default: the file the coordinator wrote on this machine, \
     $TMPDIR/dmtcp-<uid>/coord-<host>-<port>.secret)";

/// `--keep-generations N`: committed checkpoint generations to keep.
pub fn keep_generations() -> Arg {
    Arg::new("keep_generations")
        .long("keep-generations")
        .value_name("N")
        .value_parser(value_parser!(u32))
        .value_hint(ValueHint::Other)
        .help(
            "Keep the N newest committed checkpoint generations \
             (env DMTCP_KEEP_GENERATIONS, default 2; 0 = all)",
        )
}

/// The `--keep-generations` given, else `DMTCP_KEEP_GENERATIONS`.
pub fn keep_generations_of(m: &clap::ArgMatches) -> Option<u32> {
    m.get_one::<u32>("keep_generations").copied().or_else(|| {
        std::env::var(dmtcp_common::env::KEEP_GENERATIONS)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    })
}

/// `-c/--ckptdir DIR`.
pub fn ckptdir(help: &'static str) -> Arg {
    Arg::new("ckptdir")
        .short('c')
        .long("ckptdir")
        .value_name("DIR")
        .value_parser(value_parser!(PathBuf))
        .value_hint(ValueHint::DirPath)
        .help(help)
}

/// `-t/--tmpdir DIR`.
pub fn tmpdir(help: &'static str) -> Arg {
    Arg::new("tmpdir")
        .short('t')
        .long("tmpdir")
        .value_name("DIR")
        .value_hint(ValueHint::DirPath)
        .help(help)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn values_and_operands_are_not_respelled() {
        let cmd = coord_args(tool("t", ""), "", "")
            .arg(flag("x", "xx", ""))
            .arg(Arg::new("prog").num_args(1..).trailing_var_arg(true));
        let f = |w: &str| (w == "x" || w == "-x").then(|| "--xx".to_string());
        let r = respell(
            &cmd,
            words("t -x -h x -p x -jh x --port=1 -x x -x"),
            true,
            f,
        );
        assert_eq!(r, words("t --xx -h x -p x -jh x --port=1 --xx x -x"));
        let r = respell(&cmd, words("t -- -x"), false, f);
        assert_eq!(r, words("t -- -x"));
        let r = respell(&cmd, words("t -hx -x x"), false, f);
        assert_eq!(r, words("t -hx --xx --xx"));
    }

    /// How the tools' parsers take DMTCP's spellings (what each option then
    /// does is tested on the binaries, in tests/options.rs).
    #[test]
    fn dmtcp_spellings() {
        let launch = |a: &str| {
            let mut cmd = crate::launch::command("dmtcp_launch");
            let args = respell(&cmd, words(&format!("dmtcp_launch {a}")), true, |w| {
                crate::launch::respell(&cmd, w)
            });
            parse(&mut cmd, args)
        };
        let m = launch("-qq -q -p7 -i5 --no-gzip --gzip --disable-foo-plugin --disable-svipc-plugin -j --any-coordinator prog -c --help").unwrap();
        assert_eq!(m.get_count("quiet"), 3);
        let a = coord_addr(&m);
        assert_eq!((a.port, a.interval, a.mode), (7, Some(5), CoordMode::Any));
        assert!(m.get_flag("gzip") && !m.get_flag("no_gzip"));
        assert!(m.get_flag("disable_sysv_plugin"));
        let other: Vec<&String> = m.get_many("disable_plugin").unwrap().collect();
        assert_eq!(other, ["foo"]);
        let prog: Vec<&String> = m.get_many("command").unwrap().collect();
        assert_eq!(prog, ["prog", "-c", "--help"]);
        let m = launch("-p 1 --coord-port=2 -- -prog --disable-x-plugin").unwrap();
        assert_eq!(coord_addr(&m).port, 2);
        let prog: Vec<&String> = m.get_many("command").unwrap().collect();
        assert_eq!(prog, ["-prog", "--disable-x-plugin"]);
        assert_eq!(launch("--ckpt-signal 9 prog").err(), Some(1));
        assert_eq!(launch("-j").err(), Some(1));
        let m = launch("--join -j --new-coordinator prog").unwrap();
        assert_eq!(coord_addr(&m).mode, CoordMode::New);
    }

    #[test]
    fn help_is_wrapped() {
        let w = wrap(&"word ".repeat(40), HELP_WIDTH);
        assert!(w.lines().count() > 3, "{w}");
        assert!(w.lines().all(|l| l.len() <= HELP_WIDTH), "{w}");
        assert_eq!(w.split_whitespace().count(), 40);
    }
}
