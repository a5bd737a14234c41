//! The HDF5 writer's files compared with a bare run's (shared by the
//! single-node and multi-node tests).

use std::path::Path;
use std::process::Command;

/// Every rank's `field_<rank>.h5` in `run` reads back (`h5dump`) exactly as
/// in `bare`, which must hold the dataset `last` (the bare run finished).
pub fn same_files(bare: &Path, run: &Path, ranks: usize, last: &str) {
    for rank in 0..ranks {
        same_file(bare, run, &format!("field_{rank}.h5"), last);
    }
}

/// The file `f` in `run` reads back (`h5dump`) exactly as in `bare`, which
/// must hold the dataset `last`.
pub fn same_file(bare: &Path, run: &Path, f: &str, last: &str) {
    let dump = |d: &Path| {
        let o = Command::new("h5dump")
            .arg(f)
            .current_dir(d)
            .output()
            .expect("h5dump (hdf5-tools)");
        assert!(
            o.status.success(),
            "h5dump {} failed: {}",
            d.join(f).display(),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (a, b) = (dump(bare), dump(run));
    assert!(
        a.contains(last),
        "bare file incomplete: {}",
        &a[..a.len().min(300)]
    );
    assert!(a == b, "{f} after restart differs from the bare run's");
}
