//! A loop device of this host for attacks through device nodes: backed by a temporary file of a
//! recognisable text, so a test can tell whether a sandbox read it (the text in its output) or
//! wrote it (the file changed). Detached when dropped.

use std::path::Path;
use std::process::Command;

/// The text the backing file repeats.
pub const SECRET: &[u8] = b"HOST-DISK-SECRET\n";
const REPEAT: usize = 4096;

pub struct LoopDevice {
    /// `/dev/loopN`; empty once detached.
    pub path: String,
    backing: tempfile::NamedTempFile,
}

impl LoopDevice {
    pub fn new() -> LoopDevice {
        let backing = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(backing.path(), LoopDevice::contents()).expect("write the backing file");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing.path())
            .output()
            .expect("losetup (util-linux) is needed: run scripts/setup.sh");
        assert!(
            out.status.success(),
            "losetup -f --show failed (needs root and a free loop device): {out:?}"
        );
        LoopDevice {
            path: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            backing,
        }
    }

    /// What the backing file holds as long as nothing wrote through the device.
    pub fn contents() -> Vec<u8> {
        SECRET.repeat(REPEAT)
    }

    /// The device number.
    pub fn dev(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).expect("stat loop").rdev()
    }

    /// (major, minor) of the device.
    pub fn numbers(&self) -> (u32, u32) {
        (rustix::fs::major(self.dev()), rustix::fs::minor(self.dev()))
    }

    /// Makes a block device node for this loop device at `at`.
    pub fn node_at(&self, at: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            at,
            rustix::fs::FileType::BlockDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            self.dev(),
        )
        .unwrap_or_else(|e| panic!("mknod {}: {e}", at.display()));
    }

    /// Fails the test if anything wrote through the device (the writer has closed it: the last
    /// close of a block device writes back what it cached).
    pub fn assert_unchanged(&self, what: &str) {
        let now = std::fs::read(self.backing.path()).expect("read the backing file");
        assert!(
            now == LoopDevice::contents(),
            "{what} wrote through the device node into the host's loop device {}",
            self.path
        );
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
