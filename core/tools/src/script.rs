//! The `dmtcp_restart_script.sh` the coordinator writes after a checkpoint.

/// What the script needs to know.
pub struct ScriptInfo {
    pub comp_id: String,
    pub generation: u32,
    pub coord_host: String,
    pub coord_port: u16,
    pub interval: u32,
    pub restart_bin: String,
    pub ckpt_dir: String,
    pub images: Vec<String>,
}

fn quote(s: &str) -> String {
    format!("'{}'", inside_single(s))
}

/// `s` as it must appear between single quotes.
fn inside_single(s: &str) -> String {
    s.replace('\'', r"'\''")
}

/// `s` on one comment line (control characters shown as `?`).
fn comment(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// The script text.
pub fn render(i: &ScriptInfo) -> String {
    let images: Vec<String> = i.images.iter().map(|s| quote(s)).collect();
    format!(
        r#"#!/bin/bash
# Restart script written by dmtcp_coordinator (DMTCP-rs {version})
# computation {comp}, checkpoint generation {gen}.
# It restarts every process of the computation from its image.
set -e

usage_str='USAGE:
  dmtcp_restart_script.sh [OPTIONS]

OPTIONS:
  --coord-host, -h HOST  coordinator host (default: $DMTCP_COORD_HOST or {host})
  --coord-port, -p PORT  coordinator port (default: $DMTCP_COORD_PORT or {port})
  --interval, -i SECS    checkpoint interval after restart (default: {interval})
  --restartdir, -d DIR   directory holding the images (default: {dir})
  --help                 print this message'

default_host={hostq}
coord_host="${{DMTCP_COORD_HOST:-$default_host}}"
coord_port="${{DMTCP_COORD_PORT:-{port}}}"
interval={interval}
restart_dir={dirq}
default_restart={binq}
dmtcp_restart="${{DMTCP_RESTART:-$default_restart}}"

while [ $# -gt 0 ]; do
  case "$1" in
    --help) echo "$usage_str"; exit 0;;
    -h|--coord-host|--host) coord_host="$2"; shift 2;;
    -p|--coord-port|--port) coord_port="$2"; shift 2;;
    -i|--interval) interval="$2"; shift 2;;
    -d|--restartdir) restart_dir="$2"; shift 2;;
    --hostfile) echo "dmtcp_restart_script.sh: --hostfile: this job ran on one host; ignoring" >&2; shift 2;;
    *) echo "dmtcp_restart_script.sh: unknown option '$1'" >&2; echo "$usage_str" >&2; exit 1;;
  esac
done

images=({images})
paths=()
for f in "${{images[@]}}"; do paths+=("$restart_dir/$f"); done

exec "$dmtcp_restart" --coord-host "$coord_host" --coord-port "$coord_port" --interval "$interval" "${{paths[@]}}"
"#,
        version = dmtcp_common::VERSION,
        comp = comment(&i.comp_id),
        gen = i.generation,
        host = inside_single(&i.coord_host),
        hostq = quote(&i.coord_host),
        port = i.coord_port,
        interval = i.interval,
        dir = inside_single(&i.ckpt_dir),
        dirq = quote(&i.ckpt_dir),
        binq = quote(&i.restart_bin),
        images = images.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names from processes (computation id, image directory) cannot put
    /// commands into the script.
    #[test]
    fn hostile_names_stay_text() {
        let dir = std::env::temp_dir().join(format!("dmtcp-script-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("pwned");
        let m = marker.display().to_string();
        let ckpt_dir = format!("{}/a'b; touch {m}; '$(touch {m})`touch {m}`\"", dir.display());
        let info = ScriptInfo {
            comp_id: format!("c1\ntouch {m}\n"),
            generation: 1,
            coord_host: format!("h$(touch {m})\"'"),
            coord_port: 7779,
            interval: 0,
            restart_bin: format!("/bin/echo\"$(touch {m})"),
            ckpt_dir: ckpt_dir.clone(),
            images: vec![format!("ckpt_x'$(touch {m}).dmtcp")],
        };
        let path = dir.join("script.sh");
        std::fs::write(&path, render(&info)).unwrap();
        let help = std::process::Command::new("bash").arg(&path).arg("--help").output().unwrap();
        assert!(help.status.success());
        assert!(String::from_utf8_lossy(&help.stdout).contains(&ckpt_dir), "{}", String::from_utf8_lossy(&help.stdout));
        // Run to the end, with DMTCP_RESTART unset: it execs restart_bin (no such file).
        let _ = std::process::Command::new("bash").arg(&path).env_remove("DMTCP_RESTART").output().unwrap();
        let ran = marker.exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!ran, "a name in the script ran a command");
    }
}
