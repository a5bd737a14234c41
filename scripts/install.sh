#!/usr/bin/env bash
# Install DMTCP-rs under a prefix, with DMTCP's layout:
#
#   PREFIX/bin/          dmtcp_launch, dmtcp_checkpoint, dmtcp_command,
#                        dmtcp_restart, dmtcp_coordinator, dmtcp_ssh,
#                        dmtcp_sshd, dmtcp_srun, softib
#   PREFIX/lib/dmtcp/    libdmtcp.so, the plugins (libdmtcp_ssh.so, libdmtcp_batch.so,
#                        libdmtcp_tun.so, libdmtcp_ib.so, libdmtcp_kvm.so), the restorer, the software
#                        InfiniBand device (softib, libsoftib_verbs.so)
#   PREFIX/include/      dmtcp.h
#   PREFIX/share/man/man1/, PREFIX/share/bash-completion/completions/,
#   PREFIX/share/doc/dmtcp-rs/ (README, docs, examples)
#
# The tools find their libraries relative to themselves, so the tree can
# be moved or copied as a whole (e.g. to /opt/dmtcp-rs/VERSION on shared
# storage).
#
#   scripts/install.sh [--prefix DIR] [--no-build] [--from DIR]
#
# Default prefix /usr/local. --no-build installs what target/release (or
# the --from directory) holds.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local
build=1
r=target/release
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 1; }
              prefix=$2; shift 2;;
    --prefix=*) prefix=${1#--prefix=}; shift;;
    --no-build) build=; shift;;
    --from) [ $# -ge 2 ] || { echo "install.sh: --from needs a directory" >&2; exit 1; }
            r=$2; build=; shift 2;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0;;
    *) echo "install.sh: unknown option '$1' (try --help)" >&2; exit 1;;
  esac
done
if [ -n "$build" ]; then
  cargo build --release --workspace
fi
tools=(dmtcp_launch dmtcp_checkpoint dmtcp_command dmtcp_restart dmtcp_coordinator)
progs=("${tools[@]}" dmtcp_ssh dmtcp_sshd dmtcp_srun)
libs=(libdmtcp.so libdmtcp_ssh.so libdmtcp_batch.so libdmtcp_tun.so libdmtcp_ib.so libdmtcp_kvm.so dmtcp_restorer softib libsoftib_verbs.so)
for f in "${progs[@]}" "${libs[@]}"; do
  [ -f "$r/$f" ] || { echo "install.sh: $r/$f is missing: build first (cargo build --release --workspace)" >&2; exit 1; }
done
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
bin=$prefix/bin
lib=$prefix/lib/dmtcp
man=$prefix/share/man/man1
comp=$prefix/share/bash-completion/completions
doc=$prefix/share/doc/dmtcp-rs
install -d "$bin" "$lib" "$lib/softib-lib" "$prefix/include" "$man" "$comp" "$doc/docs" "$doc/examples"
for f in "${progs[@]}"; do install -m 755 "$r/$f" "$bin/$f"; done
for f in "${libs[@]}"; do install -m 755 "$r/$f" "$lib/$f"; done
# softib finds its verbs library beside itself; the link libibverbs.so.1
# is made here, where users may not write later.
ln -sfn ../libsoftib_verbs.so "$lib/softib-lib/libibverbs.so.1"
ln -sfn ../lib/dmtcp/softib "$bin/softib"
install -m 644 include/dmtcp.h "$prefix/include/dmtcp.h"
for t in "${tools[@]}"; do
  "$bin/$t" --generate-man "$man" >/dev/null
  "$bin/$t" --generate-completions bash > "$comp/$t"
done
install -m 644 README.md "$doc/README.md"
install -m 644 docs/*.md "$doc/docs/"
cp -r examples/. "$doc/examples/"
echo "installed DMTCP-rs in $prefix (add $bin to PATH, $prefix/share/man to MANPATH)"
