//! What every storage layer shares about the device under it: a full device (which a writer
//! survives by undoing what it started and trying again once space returns) told apart from
//! every other I/O error (which is fatal: after a failed write or fdatasync the page cache can
//! no longer be trusted), and the space a filesystem has left.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// ENOSPC or EDQUOT: the device or the user's quota is full. Nothing is wrong with what is
/// already on the device.
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Bytes an unprivileged writer may still allocate on the filesystem holding `path` (statvfs's
/// `f_bavail`: what ext4's reserved blocks leave to us).
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value that the call overwrites.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `stat` is a valid out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_is_enospc_or_edquot_only() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_out_of_space(&io::Error::other("no errno")));
    }

    #[test]
    fn available_bytes_of_a_real_filesystem_is_positive() {
        assert!(available_bytes(&std::env::temp_dir()).unwrap() > 0);
        assert!(available_bytes(Path::new("/no/such/dir")).is_err());
    }
}
