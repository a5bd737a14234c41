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
    /// The host each image was taken on (same order as `images`).
    pub hosts: Vec<String>,
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
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The script text.
pub fn render(i: &ScriptInfo) -> String {
    let images: Vec<String> = i.images.iter().map(|s| quote(s)).collect();
    let hosts: Vec<String> = (0..i.images.len())
        .map(|k| quote(i.hosts.get(k).map(String::as_str).unwrap_or(&i.coord_host)))
        .collect();
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
  --restartdir, -d DIR   directory holding the images (default: {dir},
                         the checkpoint generation this script belongs to)
  --hostfile FILE        restart the images of the i-th original host on the
                         i-th host of FILE (one per line, first word; also
                         $SLURM_JOB_NODELIST or $PBS_NODEFILE when set)
  --help                 print this message

Images of other hosts than this one are restarted there over ssh
($DMTCP_RSH, default "ssh"), all joining one coordinator. Inside a SLURM
allocation ($SLURM_JOB_ID and $SLURM_JOB_NODELIST set, srun found, no
$DMTCP_RSH), the images of every host are restarted with
"srun --nodes=1 --ntasks=1 --overlap -w HOST" instead, this host included,
and the coordinator runs here unless --coord-host or
$DMTCP_COORD_HOST names one.'

default_host={hostq}
coord_host="${{DMTCP_COORD_HOST:-$default_host}}"
coord_given="${{DMTCP_COORD_HOST:+1}}"
coord_port="${{DMTCP_COORD_PORT:-{port}}}"
interval={interval}
restart_dir={dirq}
default_restart={binq}
dmtcp_restart="${{DMTCP_RESTART:-$default_restart}}"
hostfile=

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--coord-host|--host|-p|--coord-port|--port|-i|--interval|-d|--restartdir|--hostfile)
      [ $# -ge 2 ] || {{ echo "dmtcp_restart_script.sh: option '$1' needs a value" >&2; exit 1; }};;
  esac
  case "$1" in
    --help) echo "$usage_str"; exit 0;;
    -h|--coord-host|--host) coord_host="$2"; coord_given=1; shift 2;;
    -p|--coord-port|--port) coord_port="$2"; shift 2;;
    -i|--interval) interval="$2"; shift 2;;
    -d|--restartdir) restart_dir="$2"; shift 2;;
    --hostfile) hostfile="$2"; shift 2;;
    *) echo "dmtcp_restart_script.sh: unknown option '$1'" >&2; echo "$usage_str" >&2; exit 1;;
  esac
done

for v in "$coord_port" "$interval"; do
  case "$v" in
    ''|*[!0-9]*) echo "dmtcp_restart_script.sh: '$v' is not a number (--coord-port, --interval)" >&2; exit 1;;
  esac
done

images=({images})
hosts=({hosts})
set +e

# The original hosts, in order of first appearance.
old_hosts=()
for h in "${{hosts[@]}}"; do
  seen=0
  for o in "${{old_hosts[@]}}"; do [ "$o" = "$h" ] && seen=1; done
  [ $seen = 1 ] || old_hosts+=("$h")
done

# New hosts, in order: --hostfile, else the batch system's node list.
new_hosts=()
if [ -n "$hostfile" ]; then
  while read -r h _; do
    case "$h" in ''|'#'*) continue;; esac
    new_hosts+=("$h")
  done < "$hostfile"
elif [ -n "${{SLURM_JOB_NODELIST:-}}" ] && command -v scontrol >/dev/null; then
  while read -r h; do new_hosts+=("$h"); done < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
elif [ -n "${{PBS_NODEFILE:-}}" ] && [ -r "$PBS_NODEFILE" ]; then
  while read -r h; do new_hosts+=("$h"); done < <(awk '!seen[$1]++ {{print $1}}' "$PBS_NODEFILE")
fi
if [ ${{#new_hosts[@]}} -gt 0 ] && [ ${{#new_hosts[@]}} -lt ${{#old_hosts[@]}} ]; then
  echo "dmtcp_restart_script.sh: ${{#old_hosts[@]}} hosts needed, the host list has ${{#new_hosts[@]}}" >&2
  exit 1
fi

this_host=$(hostname)
# Under SLURM, images go to the allocation's nodes with srun.
use_srun=
if [ -z "${{DMTCP_RSH:-}}" ] && [ -n "${{SLURM_JOB_ID:-}}" ] && [ -n "${{SLURM_JOB_NODELIST:-}}" ] && command -v srun >/dev/null; then
  use_srun=1
  [ -n "$coord_given" ] || coord_host="$this_host"
fi
is_here() {{ [ -z "$use_srun" ] && {{ [ "$1" = "$this_host" ] || [ "$1" = localhost ] || [ "$1" = 127.0.0.1 ]; }}; }}
is_this_host() {{ [ "$1" = "$this_host" ] || [ "$1" = localhost ] || [ "$1" = 127.0.0.1 ]; }}

local_paths=()
remote_hosts=()
remote_paths=()
for k in "${{!old_hosts[@]}}"; do
  target="${{new_hosts[$k]:-${{old_hosts[$k]}}}}"
  group=()
  for j in "${{!images[@]}}"; do
    [ "${{hosts[$j]}}" = "${{old_hosts[$k]}}" ] || continue
    case "${{images[$j]}}" in
      /*) group+=("${{images[$j]}}");;
      *) group+=("$restart_dir/${{images[$j]}}");;
    esac
  done
  if is_here "$target"; then
    local_paths+=("${{group[@]}}")
  else
    remote_hosts+=("$target")
    quoted=
    for f in "${{group[@]}}"; do quoted+=" $(printf '%q' "$f")"; done
    remote_paths+=("$quoted")
  fi
done

if [ ${{#remote_hosts[@]}} -eq 0 ]; then
  exec "$dmtcp_restart" --coord-host "$coord_host" --coord-port "$coord_port" --interval "$interval" "${{local_paths[@]}}"
fi

# Several hosts: one coordinator here, every host's dmtcp_restart joins it.
bin_dir=$(dirname "$dmtcp_restart")
if ! "$bin_dir/dmtcp_command" --coord-host "$coord_host" --coord-port "$coord_port" -s >/dev/null 2>&1; then
  if ! is_this_host "$coord_host"; then
    echo "dmtcp_restart_script.sh: no coordinator at $coord_host:$coord_port" >&2
    exit 1
  fi
  port_file=$(mktemp)
  rm -f "$port_file"
  "$bin_dir/dmtcp_coordinator" --daemon --exit-on-last -q -p "$coord_port" --port-file "$port_file" -i "$interval" </dev/null
  for _ in $(seq 200); do [ -s "$port_file" ] && break; sleep 0.05; done
  [ -s "$port_file" ] && coord_port=$(cat "$port_file")
  rm -f "$port_file"
fi
case "$coord_host" in localhost|127.*|::1) coord_host="$this_host";; esac
rsh=(${{DMTCP_RSH:-ssh}})
pids=()
if [ ${{#local_paths[@]}} -gt 0 ]; then
  "$dmtcp_restart" --join-coordinator --coord-host "$coord_host" --coord-port "$coord_port" --interval "$interval" "${{local_paths[@]}}" &
  pids+=($!)
fi
# The coordinator's secret goes to the other hosts' dmtcp_restart on the
# standard input of ssh or srun (never on a command line).
secret_file=${{DMTCP_SECRET_FILE:-${{TMPDIR:-/tmp}}/dmtcp-$(id -u)/coord-$this_host-$coord_port.secret}}
for k in "${{!remote_hosts[@]}}"; do
  cmd="$(printf '%q' "$dmtcp_restart") --join-coordinator --coord-host $(printf '%q' "$coord_host") --coord-port $(printf '%q' "$coord_port") --interval $(printf '%q' "$interval")"
  if [ -n "$use_srun" ] && [ -r "$secret_file" ]; then
    srun --nodes=1 --ntasks=1 --overlap --quiet -w "${{remote_hosts[$k]}}" /bin/sh -c "exec $cmd --secret-from-stdin${{remote_paths[$k]}}" <"$secret_file" &
  elif [ -n "$use_srun" ]; then
    srun --nodes=1 --ntasks=1 --overlap --quiet -w "${{remote_hosts[$k]}}" /bin/sh -c "exec $cmd${{remote_paths[$k]}}" </dev/null &
  elif [ -r "$secret_file" ]; then
    "${{rsh[@]}}" "${{remote_hosts[$k]}}" "$cmd --secret-from-stdin${{remote_paths[$k]}}" <"$secret_file" &
  else
    "${{rsh[@]}}" -n "${{remote_hosts[$k]}}" "$cmd${{remote_paths[$k]}}" &
  fi
  pids+=($!)
done
status=0
for p in "${{pids[@]}}"; do wait "$p" || status=$?; done
exit $status
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
        hosts = hosts.join(" "),
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
        let ckpt_dir = format!(
            "{}/a'b; touch {m}; '$(touch {m})`touch {m}`\"",
            dir.display()
        );
        let info = ScriptInfo {
            comp_id: format!("c1\ntouch {m}\n"),
            generation: 1,
            coord_host: format!("h$(touch {m})\"'"),
            coord_port: 7779,
            interval: 0,
            restart_bin: format!("/bin/echo\"$(touch {m})"),
            ckpt_dir: ckpt_dir.clone(),
            images: vec![format!("ckpt_x'$(touch {m}).dmtcp")],
            hosts: vec![format!("h$(touch {m})'")],
        };
        let path = dir.join("script.sh");
        std::fs::write(&path, render(&info)).unwrap();
        let help = std::process::Command::new("bash")
            .arg(&path)
            .arg("--help")
            .output()
            .unwrap();
        assert!(help.status.success());
        assert!(
            String::from_utf8_lossy(&help.stdout).contains(&ckpt_dir),
            "{}",
            String::from_utf8_lossy(&help.stdout)
        );
        // Run to the end, with DMTCP_RESTART unset: it execs restart_bin (no such file).
        let _ = std::process::Command::new("bash")
            .arg(&path)
            .env_remove("DMTCP_RESTART")
            .output()
            .unwrap();
        let ran = marker.exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!ran, "a name in the script ran a command");
    }
}
