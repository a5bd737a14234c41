# Spack package recipe for DMTCP-rs (not yet in Spack's builtin
# repository). Use it from a repository of your own:
#   spack repo create myrepo && cp -r packaging/spack/dmtcp-rs myrepo/packages/
#   spack repo add myrepo && spack install dmtcp-rs
# Written on paper: Spack is not installed where the project is built, so
# this recipe has not been run.

from spack.package import *


class DmtcpRs(Package):
    """Transparent checkpoint/restart of unmodified Linux programs and MPI
    jobs, with DMTCP's tools and options (dmtcp_launch, dmtcp_command,
    dmtcp_restart, dmtcp_coordinator), an ssh plugin for multi-host jobs and
    an InfiniBand plugin."""

    homepage = "https://example.invalid/dmtcp-rs"
    git = "https://example.invalid/dmtcp-rs.git"

    maintainers("dmtcp-rs")
    license("MIT OR Apache-2.0")

    version("main", branch="main")

    depends_on("rust@1.85:", type="build")
    depends_on("pkgconfig", type="build")
    depends_on("cmake", type="build")
    depends_on("llvm", type="build")  # libclang, for the verbs bindings
    depends_on("rdma-core")  # verbs headers: the InfiniBand plugin and its software device
    depends_on("libnl")
    depends_on("hdf5", type="build")  # the MPI test programs in the workspace
    depends_on("mpi", type="build")

    conflicts("platform=darwin", msg="checkpointing is Linux-only")

    def install(self, spec, prefix):
        cargo = which("cargo")
        cargo("build", "--release", "--workspace", "--locked")
        bash = which("bash")
        bash("scripts/install.sh", "--prefix", prefix, "--no-build")

    def setup_run_environment(self, env):
        env.prepend_path("MANPATH", self.prefix.share.man)
        env.prepend_path("CPATH", self.prefix.include)
