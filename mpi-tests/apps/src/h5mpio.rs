//! Parallel HDF5 (feature `mpio`): a file opened by every rank through the
//! MPI-IO driver, and collective writes of each rank's part of a dataset.
//! `hdf5-metno` opens files with the MPI-IO driver but writes with the
//! default (independent) transfer mode; the collective mode is set here
//! through the C API.

use hdf5_metno as h5;
use hdf5_metno_sys::{h5d, h5i, h5p, h5t};
use mpi::raw::AsRaw;

/// Create `path` with the MPI-IO driver on the communicator of `world`
/// (collective: every rank calls it).
pub fn create(path: &str, world: &mpi::topology::SimpleCommunicator) -> h5::Result<h5::File> {
    h5::File::with_options()
        .with_fapl(|p| p.mpio(world.as_raw(), None))
        .create(path)
}

/// A dataset transfer property list in collective MPI-IO mode.
pub struct Collective {
    dxpl: h5i::hid_t,
}

impl Collective {
    pub fn new() -> Result<Self, String> {
        // SAFETY: H5open initialises the library (idempotent); the class id
        // is a global the library set in it.
        let dxpl = unsafe {
            hdf5_metno_sys::h5::H5open();
            h5p::H5Pcreate(*h5p::H5P_CLS_DATASET_XFER)
        };
        if dxpl < 0 {
            return Err("H5Pcreate(dataset transfer) failed".into());
        }
        let me = Self { dxpl };
        // SAFETY: our property list, a valid mode.
        if unsafe { h5p::H5Pset_dxpl_mpio(dxpl, h5p::H5FD_mpio_xfer_t::H5FD_MPIO_COLLECTIVE) } < 0 {
            return Err("H5Pset_dxpl_mpio(collective) failed".into());
        }
        Ok(me)
    }

    /// Every rank writes `data` at element `offset` of the one-dimensional
    /// `ds` (collective: every rank calls it, each with its own part).
    pub fn write(&self, ds: &h5::Dataset, offset: usize, data: &[f64]) -> h5::Result<()> {
        let fspace = ds.space()?.select(offset..offset + data.len())?;
        let mspace = h5::Dataspace::try_new(data.len())?;
        // SAFETY: the dataset, both dataspaces and the property list are
        // open ids; the memory dataspace has data.len() doubles, which
        // `data` holds, and the library only reads the buffer.
        let rc = unsafe {
            h5d::H5Dwrite(
                ds.id(),
                *h5t::H5T_NATIVE_DOUBLE,
                mspace.id(),
                fspace.id(),
                self.dxpl,
                data.as_ptr().cast(),
            )
        };
        if rc < 0 {
            return Err(h5::Error::from("collective H5Dwrite failed"));
        }
        Ok(())
    }
}

impl Drop for Collective {
    fn drop(&mut self) {
        // SAFETY: our property list, closed once.
        unsafe { h5p::H5Pclose(self.dxpl) };
    }
}
