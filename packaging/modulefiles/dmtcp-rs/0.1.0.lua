-- Lmod modulefile for DMTCP-rs installed with
--   scripts/install.sh --prefix /opt/dmtcp-rs/0.1.0
-- Copy to <modulepath>/dmtcp-rs/0.1.0.lua and set `root` to the prefix.
-- Then: module load dmtcp-rs
help([[
DMTCP-rs: transparent checkpoint/restart of Linux programs and MPI jobs
(dmtcp_launch, dmtcp_command, dmtcp_restart, dmtcp_coordinator).
]])
whatis("Name: dmtcp-rs")
whatis("Version: 0.1.0")
whatis("Description: transparent checkpoint/restart (DMTCP-compatible tools)")

local root = "/opt/dmtcp-rs/0.1.0"

prepend_path("PATH", pathJoin(root, "bin"))
prepend_path("MANPATH", pathJoin(root, "share/man"))
-- dmtcp.h for programs that use the checkpointer's interface.
prepend_path("CPATH", pathJoin(root, "include"))
setenv("DMTCP_RS_ROOT", root)
