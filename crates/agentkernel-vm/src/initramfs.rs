//! A writer of newc cpio archives ("070701"), the format the Linux kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! The archive is built in memory from explicit entries — directories, regular files, symlinks
//! and character devices — with owner root and mtime 0, so the same entries always give the
//! same bytes. Nothing is read from the host's filesystem.

use crate::VmError;

const MAGIC: &[u8] = b"070701";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A newc cpio archive being written.
#[derive(Debug, Default)]
pub struct Initramfs {
    buf: Vec<u8>,
    next_ino: u32,
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory, e.g. `dir("dev", 0o755)`. Parents are not made implicitly: add them first.
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self, VmError> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file with these contents, e.g. `file("init", 0o755, &bytes)`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<&mut Self, VmError> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, VmError> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node, e.g. `char_dev("dev/console", 0o600, 5, 1)`.
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, VmError> {
        self.entry(path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// The finished archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.push_header("TRAILER!!!", 0, 0, 1, (0, 0), 0);
        self.buf
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<&mut Self, VmError> {
        let bad = |reason| VmError::InitramfsEntry {
            path: path.to_owned(),
            reason,
        };
        if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
            return Err(bad("the path must be relative and name an entry"));
        }
        if path.contains('\0') {
            return Err(bad("the path contains a NUL byte"));
        }
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("the path has an empty, `.` or `..` component"));
        }
        if path == "TRAILER!!!" {
            return Err(bad("the name is the archive's end marker"));
        }
        let size = u32::try_from(data.len()).map_err(|_| bad("the data is 4 GiB or more"))?;
        self.next_ino += 1;
        let ino = self.next_ino;
        self.push_header(path, ino, mode, nlink, rdev, size);
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(self)
    }

    fn push_header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        (rmajor, rminor): (u32, u32),
        size: u32,
    ) {
        // name length includes the NUL; it is at most a path, far below u32::MAX.
        let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(MAGIC);
        for field in [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime
            size, 0, // devmajor
            0, // devminor
            rmajor, rminor, namesize, 0, // check
        ] {
            self.buf
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Pads to a multiple of 4 bytes (headers and data both start 4-aligned).
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev, data) of an entry.
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// The entries of an archive, parsed back.
    fn parse(mut a: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&a[..6], MAGIC, "magic at offset {offset}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[6 + 8 * i..6 + 8 * (i + 1)]).expect("from_utf8");
                u32::from_str_radix(s, 16).expect("from_str_radix")
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = 110 + namesize as usize;
            let name = std::str::from_utf8(&a[110..name_end - 1])
                .expect("from_utf8")
                .to_owned();
            assert_eq!(a[name_end - 1], 0);
            let data_start = name_end.next_multiple_of(4);
            let data_end = data_start + size as usize;
            let data = a[data_start..data_end].to_vec();
            let next = data_end.next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(next, a.len(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, (rmaj, rmin), data));
            offset += next;
            a = &a[next..];
        }
    }

    #[test]
    fn entries_read_back() {
        let mut i = Initramfs::new();
        i.dir("dev", 0o755).expect("dir");
        i.char_dev("dev/console", 0o600, 5, 1).expect("char_dev");
        i.file("init", 0o755, b"#!/bin/sh\n").expect("file");
        i.symlink("sbin", "bin").expect("symlink");
        i.file("empty", 0o644, b"").expect("file");
        let a = i.finish();
        assert_eq!(a.len() % 4, 0);
        assert_eq!(
            parse(&a),
            vec![
                ("dev".into(), 0o040_755, (0, 0), vec![]),
                ("dev/console".into(), 0o020_600, (5, 1), vec![]),
                ("init".into(), 0o100_755, (0, 0), b"#!/bin/sh\n".to_vec()),
                ("sbin".into(), 0o120_777, (0, 0), b"bin".to_vec()),
                ("empty".into(), 0o100_644, (0, 0), vec![]),
            ]
        );
    }

    #[test]
    fn header_layout_is_newc() {
        let mut i = Initramfs::new();
        i.file("a", 0o644, b"xy").expect("file");
        let a = i.finish();
        let expected_header = concat!(
            "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
            "00000002", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
        );
        assert_eq!(&a[..110], expected_header.as_bytes());
        // name "a\0" then padding to 112, data "xy" then padding to 116.
        assert_eq!(&a[110..116], b"a\0xy\0\0");
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut i = Initramfs::new();
        for p in [
            "",
            "/init",
            "dev/",
            "a/../b",
            "./x",
            "a//b",
            "TRAILER!!!",
            "a\0b",
        ] {
            let err = i.file(p, 0o644, b"").expect_err("file should fail");
            assert!(err.to_string().contains("initramfs entry"), "{p:?}: {err}");
        }
    }
}
