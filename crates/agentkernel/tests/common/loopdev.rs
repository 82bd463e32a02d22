//! A loop device of this host for attacks through device nodes: backed by a temporary file of
//! known bytes, so a test can tell whether a sandbox read or wrote it.

use std::io::Write;
use std::process::Command;

/// A loop device of this host backed by a temporary file of 0xAB bytes; detached on drop.
pub struct LoopDevice {
    pub path: String,
    backing: tempfile::NamedTempFile,
}

pub const BACKING: [u8; 8192] = [0xAB; 8192];

impl LoopDevice {
    pub fn new() -> LoopDevice {
        let mut backing = tempfile::NamedTempFile::new().expect("temp file");
        backing.write_all(&BACKING).expect("write");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing.path())
            .output()
            .expect("losetup (util-linux) is needed: run scripts/setup.sh");
        assert!(out.status.success(), "losetup: {out:?}");
        LoopDevice {
            path: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            backing,
        }
    }

    pub fn dev(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).expect("stat loop").rdev()
    }

    /// Detaches the device (writing back what it cached) and returns the backing file's bytes.
    pub fn detach(&mut self) -> Vec<u8> {
        let status = Command::new("losetup")
            .args(["-d", &self.path])
            .status()
            .expect("losetup -d");
        assert!(status.success());
        self.path.clear();
        std::fs::read(self.backing.path()).expect("read backing")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if !self.path.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.path]).status();
        }
    }
}
