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
    format!("'{}'", s.replace('\'', r"'\''"))
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

coord_host="${{DMTCP_COORD_HOST:-{hostq}}}"
coord_port="${{DMTCP_COORD_PORT:-{port}}}"
interval={interval}
restart_dir={dirq}
dmtcp_restart="${{DMTCP_RESTART:-{binq}}}"

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
        comp = i.comp_id,
        gen = i.generation,
        host = i.coord_host,
        hostq = i.coord_host.replace('"', ""),
        port = i.coord_port,
        interval = i.interval,
        dir = i.ckpt_dir,
        dirq = quote(&i.ckpt_dir),
        binq = i.restart_bin.replace('"', ""),
        images = images.join(" "),
    )
}
