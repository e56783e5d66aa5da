//! A root disk that can be made to die: a FUSE passthrough filesystem with a fault switch.
//!
//! The seed failure of pulsecheck is a node whose root disk hangs: every read and write blocks,
//! the kubelet's status loop stops in cadvisor's read of `/etc/os-release`, and the Lease,
//! renewed from memory over the network, goes on. To reproduce it with a real kubelet, the lab
//! serves a real node's "disk" paths — `/etc/os-release`, the kubelet root dir, containerd's
//! root — from a directory on the host through this filesystem, and flips the switch:
//!
//! - [`DiskFault::Healthy`]: every operation passes through to the backing directory;
//! - [`DiskFault::Hang`]: every operation blocks (a hung disk) until the switch moves on, as
//!   the kernel's own requests to a dead device do;
//! - [`DiskFault::Error`]: every operation fails with `EIO` (a disk that errors);
//! - [`FaultSwitch::fail_file`]: only opening and reading the named file fails with `EIO`
//!   (cadvisor then reports osImage `"Unknown"`, the seed's first symptom).
//!
//! Inode numbers are the backing files' own (one backing filesystem, so they are unique); the
//! map from inode to path follows renames. Dropping a [`FaultDisk`] releases every blocked
//! operation (with `EIO`) and unmounts. Needs root and `/dev/fuse`.

use std::{
    collections::HashMap,
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions},
    io,
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    SessionACL, TimeOrNow, WriteFlags,
};

/// How the disk behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFault {
    /// Everything passes through.
    #[default]
    Healthy,
    /// Every operation blocks until the fault changes.
    Hang,
    /// Every operation fails with `EIO`.
    Error,
}

/// The switch shared by the filesystem and whoever injects faults.
#[derive(Debug, Default)]
pub struct FaultSwitch {
    state: Mutex<SwitchState>,
    changed: Condvar,
    blocked: AtomicUsize,
}

#[derive(Debug, Default)]
struct SwitchState {
    disk: DiskFault,
    /// Paths (relative to the filesystem's root) whose open and read fail with `EIO`.
    failing: Vec<PathBuf>,
    /// The filesystem is going away: nothing blocks any more.
    closed: bool,
}

impl FaultSwitch {
    /// Sets how the whole disk behaves; a change out of [`DiskFault::Hang`] releases every
    /// blocked operation.
    pub fn set(&self, fault: DiskFault) {
        lock(&self.state).disk = fault;
        self.changed.notify_all();
    }

    /// The current disk fault.
    pub fn disk(&self) -> DiskFault {
        lock(&self.state).disk
    }

    /// Makes opening and reading `path` (relative to the root, e.g. `etc/os-release`) fail
    /// with `EIO`, or work again (`fail = false`).
    pub fn fail_file(&self, path: impl AsRef<Path>, fail: bool) {
        let path = path.as_ref().to_path_buf();
        let mut state = lock(&self.state);
        state.failing.retain(|p| *p != path);
        if fail {
            state.failing.push(path);
        }
    }

    /// How many operations are blocked by a hang right now.
    pub fn blocked(&self) -> usize {
        self.blocked.load(Ordering::SeqCst)
    }

    /// Releases everything for good: nothing blocks any more and every operation fails (the
    /// filesystem is going away; a node being killed must not wait on its own disk).
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    /// What an operation on `path` may do now: wait out a hang, then fail or go on.
    fn gate(&self, path: &Path, reads_content: bool) -> Result<(), Errno> {
        let mut state = lock(&self.state);
        if state.disk == DiskFault::Hang && !state.closed {
            self.blocked.fetch_add(1, Ordering::SeqCst);
            while state.disk == DiskFault::Hang && !state.closed {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            self.blocked.fetch_sub(1, Ordering::SeqCst);
        }
        if state.closed || state.disk == DiskFault::Error || (reads_content && state.failing.iter().any(|p| p == path)) {
            return Err(Errno::EIO);
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A mounted fault-injectable disk. Dropping it releases blocked operations, unmounts it (a
/// mount in another namespace goes with that namespace) and ends the session.
pub struct FaultDisk {
    switch: Arc<FaultSwitch>,
    mountpoint: PathBuf,
    /// Mounted in another process's namespace, which takes the mount along when it ends.
    in_namespace: bool,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for FaultDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultDisk").field("mountpoint", &self.mountpoint).field("fault", &self.switch.disk()).finish()
    }
}

/// Worker threads serving the filesystem: a hang blocks one each, so several operations can
/// queue up as on a dead disk while others still arrive.
const THREADS: usize = 4;
/// How long the kernel may cache attributes and entries: short, so a fault shows at once.
const TTL: Duration = Duration::from_millis(100);
/// The filesystem's name in the mount table.
const FS_NAME: &str = "pulsecheck-lab-disk";
/// The descriptor number `mount(8)` is given the `/dev/fuse` connection on.
const FUSE_FD: i32 = 3;

impl FaultDisk {
    /// Serves `backing` at `mountpoint` (both existing directories), healthy at first.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<FaultDisk> {
        let (fs, switch) = PassthroughFs::new(backing)?;
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName(FS_NAME.into()), MountOption::DefaultPermissions, MountOption::Dev, MountOption::Suid];
        config.acl = SessionACL::All;
        config.n_threads = Some(THREADS);
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(FaultDisk { switch, mountpoint: mountpoint.to_path_buf(), in_namespace: false, session: Some(session) })
    }

    /// Serves `backing` at `mountpoint` inside the mount namespace of process `pid` only (a
    /// real node's), healthy at first. The mount is made by `mount(8)` run there through
    /// `nsenter`, on a `/dev/fuse` descriptor this process keeps serving; it is never visible in
    /// the caller's namespace, and it disappears with that namespace, so even a lab killed with
    /// SIGKILL leaves no dead FUSE mount behind.
    pub fn mount_in_namespace_of(pid: u32, backing: &Path, mountpoint: &Path) -> io::Result<FaultDisk> {
        use std::os::fd::AsRawFd as _;
        let (fs, switch) = PassthroughFs::new(backing)?;
        let device = OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
        let fd = device.as_raw_fd();
        let options = format!("fd={FUSE_FD},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other");
        let mut command = std::process::Command::new("nsenter");
        command.args([format!("--target={pid}"), "--mount".into(), "--".into(), "mount".into(), "-i".into(), "-t".into(), "fuse".into()]);
        command.args(["-o".into(), format!("{options},dev,suid"), FS_NAME.into(), mountpoint.display().to_string()]);
        command.stdin(std::process::Stdio::null());
        // SAFETY: runs in the forked child before exec; dup2 and fcntl are async-signal-safe.
        // The descriptor on FUSE_FD is not close-on-exec, so mount(8) hands it to the kernel.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                let ok = if fd == FUSE_FD { libc::fcntl(fd, libc::F_SETFD, 0) >= 0 } else { libc::dup2(fd, FUSE_FD) >= 0 };
                if ok { Ok(()) } else { Err(io::Error::last_os_error()) }
            });
        }
        let output = command.output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "mount of the fault disk at {} in the namespace of process {pid} failed ({}): {}",
                mountpoint.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let mut config = Config::default();
        config.n_threads = Some(THREADS);
        let session = fuser::Session::from_fd(fs, device.into(), SessionACL::All, config)?.spawn()?;
        Ok(FaultDisk { switch, mountpoint: mountpoint.to_path_buf(), in_namespace: true, session: Some(session) })
    }

    /// The switch, to inject faults.
    pub fn switch(&self) -> &Arc<FaultSwitch> {
        &self.switch
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for FaultDisk {
    fn drop(&mut self) {
        // Release what hangs, then detach the mount (a plain umount is EBUSY while a process
        // still holds a file on it), then end the session.
        self.switch.close();
        if !self.in_namespace
            && let Err(error) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!(mountpoint = %self.mountpoint.display(), %error, "cannot detach the fault disk");
        }
        drop(self.session.take());
    }
}

/// The filesystem itself.
struct PassthroughFs {
    backing: PathBuf,
    switch: Arc<FaultSwitch>,
    /// Inode number → path relative to `backing` (the root is `INodeNo::ROOT`).
    paths: Mutex<HashMap<u64, PathBuf>>,
    /// The backing root's own inode number, reported as `INodeNo::ROOT`.
    root_ino: u64,
    handles: Mutex<HashMap<u64, Arc<File>>>,
    next_handle: AtomicU64,
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn system_time(secs: i64, nanos: i64) -> SystemTime {
    let nanos = u32::try_from(nanos).unwrap_or(0).min(999_999_999);
    // Times a file on the backing disk may carry that SystemTime cannot: the epoch instead.
    let time =
        if secs >= 0 { UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos)) } else { UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs())) };
    time.unwrap_or(UNIX_EPOCH)
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

impl PassthroughFs {
    /// The filesystem over `backing` and its switch, healthy.
    fn new(backing: &Path) -> io::Result<(PassthroughFs, Arc<FaultSwitch>)> {
        let backing = fs::canonicalize(backing)?;
        let switch = Arc::new(FaultSwitch::default());
        let root_ino = fs::metadata(&backing)?.ino();
        let fs = PassthroughFs {
            backing,
            switch: switch.clone(),
            paths: Mutex::new(HashMap::from([(INodeNo::ROOT.0, PathBuf::new())])),
            root_ino,
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        };
        Ok((fs, switch))
    }

    fn ino_of(&self, meta: &fs::Metadata) -> INodeNo {
        if meta.ino() == self.root_ino { INodeNo::ROOT } else { INodeNo(meta.ino()) }
    }

    fn attr(&self, meta: &fs::Metadata) -> FileAttr {
        FileAttr {
            ino: self.ino_of(meta),
            size: meta.size(),
            blocks: meta.blocks(),
            atime: system_time(meta.atime(), meta.atime_nsec()),
            mtime: system_time(meta.mtime(), meta.mtime_nsec()),
            ctime: system_time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(meta.mode()),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: u32::try_from(meta.rdev()).unwrap_or(0),
            blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
            flags: 0,
        }
    }

    /// The relative path of `ino`.
    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.paths).get(&ino.0).cloned().ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    /// Gives what a request just created to its caller, as a disk's filesystem does: the server
    /// creates as root, and a non-root program (pulsecheck-agent, uid 65532) must own its files
    /// to open them again.
    fn own(&self, rel: &Path, req: &Request) -> Result<(), Errno> {
        std::os::unix::fs::lchown(self.full(rel), Some(req.uid()), Some(req.gid())).map_err(errno)
    }

    /// Looks `rel` up in the backing directory, remembers its inode, and returns its attributes.
    fn remember(&self, rel: PathBuf) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(self.full(&rel)).map_err(errno)?;
        let attr = self.attr(&meta);
        lock(&self.paths).insert(attr.ino.0, rel);
        Ok(attr)
    }

    fn handle(&self, file: File) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::SeqCst);
        lock(&self.handles).insert(fh, Arc::new(file));
        FileHandle(fh)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The gate for an operation on `rel`, then `op`.
    fn guarded<T>(&self, rel: &Path, reads_content: bool, op: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
        self.switch.gate(rel, reads_content)?;
        op()
    }

    fn entry(&self, reply: ReplyEntry, result: Result<FileAttr, Errno>) {
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open_flags(flags: i32) -> OpenOptions {
        let mut options = OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => options.write(true),
            libc::O_RDWR => options.read(true).write(true),
            _ => options.read(true),
        };
        options.custom_flags(flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC));
        if flags & libc::O_TRUNC != 0 {
            options.truncate(true);
        }
        if flags & libc::O_APPEND != 0 {
            options.append(true);
        }
        options
    }
}

fn set_times(path: &Path, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> io::Result<()> {
    use nix::sys::{stat::UtimensatFlags, time::TimeSpec};
    let spec = |t: Option<TimeOrNow>| match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => TimeSpec::from(t.duration_since(UNIX_EPOCH).unwrap_or_default()),
    };
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &spec(atime), &spec(mtime), UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

impl Filesystem for PassthroughFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.child(parent, name).and_then(|rel| self.guarded(&rel, false, || self.remember(rel.clone())));
        self.entry(reply, result);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.rel(ino).and_then(|rel| self.guarded(&rel, false, || fs::symlink_metadata(self.full(&rel)).map_err(errno)));
        match result {
            Ok(meta) => reply.attr(&TTL, &self.attr(&meta)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.rel(ino).and_then(|rel| {
            self.guarded(&rel, false, || {
                let path = self.full(&rel);
                if let Some(mode) = mode {
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
                }
                if uid.is_some() || gid.is_some() {
                    std::os::unix::fs::lchown(&path, uid, gid).map_err(errno)?;
                }
                if let Some(size) = size {
                    OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(size)).map_err(errno)?;
                }
                if atime.is_some() || mtime.is_some() {
                    set_times(&path, atime, mtime).map_err(errno)?;
                }
                fs::symlink_metadata(&path).map_err(errno)
            })
        });
        match result {
            Ok(meta) => reply.attr(&TTL, &self.attr(&meta)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.rel(ino).and_then(|rel| self.guarded(&rel, true, || fs::read_link(self.full(&rel)).map_err(errno)));
        match result {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let result = self.child(parent, name).and_then(|rel| {
            self.guarded(&rel, false, || {
                let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
                let perm = nix::sys::stat::Mode::from_bits_truncate(mode & !umask & 0o7777);
                nix::sys::stat::mknod(&self.full(&rel), kind, perm, u64::from(rdev)).map_err(|e| Errno::from_i32(e as i32))?;
                self.own(&rel, req)?;
                self.remember(rel.clone())
            })
        });
        self.entry(reply, result);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let result = self.child(parent, name).and_then(|rel| {
            self.guarded(&rel, false, || {
                fs::DirBuilder::new().mode(mode & !umask & 0o7777).create(self.full(&rel)).map_err(errno)?;
                self.own(&rel, req)?;
                self.remember(rel.clone())
            })
        });
        self.entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.child(parent, name).and_then(|rel| self.guarded(&rel, false, || fs::remove_file(self.full(&rel)).map_err(errno)));
        Self::empty(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.child(parent, name).and_then(|rel| self.guarded(&rel, false, || fs::remove_dir(self.full(&rel)).map_err(errno)));
        Self::empty(reply, result);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let result = self.child(parent, link_name).and_then(|rel| {
            self.guarded(&rel, false, || {
                std::os::unix::fs::symlink(target, self.full(&rel)).map_err(errno)?;
                self.own(&rel, req)?;
                self.remember(rel.clone())
            })
        });
        self.entry(reply, result);
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        let result = self.child(parent, name).and_then(|from| {
            let to = self.child(newparent, newname)?;
            self.guarded(&from, false, || {
                if !flags.is_empty() {
                    // RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT: not needed by the lab.
                    return Err(Errno::EINVAL);
                }
                fs::rename(self.full(&from), self.full(&to)).map_err(errno)?;
                // Everything at or below `from` now lives below `to`.
                let mut paths = lock(&self.paths);
                for path in paths.values_mut() {
                    if let Ok(rest) = path.strip_prefix(&from) {
                        *path = if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) };
                    }
                }
                Ok(())
            })
        });
        Self::empty(reply, result);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let result = self.rel(ino).and_then(|from| {
            let to = self.child(newparent, newname)?;
            self.guarded(&to, false, || {
                fs::hard_link(self.full(&from), self.full(&to)).map_err(errno)?;
                self.remember(to.clone())
            })
        });
        self.entry(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.rel(ino).and_then(|rel| self.guarded(&rel, true, || Self::open_flags(flags.0).open(self.full(&rel)).map_err(errno)));
        match result {
            Ok(file) => reply.opened(self.handle(file), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, size: u32, _flags: OpenFlags, _lock: Option<LockOwner>, reply: ReplyData) {
        let result = self.rel(ino).and_then(|rel| {
            self.guarded(&rel, true, || {
                let file = self.file(fh)?;
                let mut buf = vec![0; size as usize];
                let n = file.read_at(&mut buf, offset).map_err(errno)?;
                buf.truncate(n);
                Ok(buf)
            })
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.rel(ino).and_then(|rel| self.guarded(&rel, false, || self.file(fh)?.write_at(data, offset).map_err(errno)));
        match result {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        let result = self.rel(ino).and_then(|rel| self.guarded(&rel, false, || Ok(())));
        Self::empty(reply, result);
    }

    fn release(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, _lock: Option<LockOwner>, _flush: bool, reply: ReplyEmpty) {
        // Never gated: closing a file must not leak the handle, whatever the disk does.
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let result = self.rel(ino).and_then(|rel| {
            self.guarded(&rel, false, || {
                let file = self.file(fh)?;
                if datasync { file.sync_data() } else { file.sync_all() }.map_err(errno)
            })
        });
        Self::empty(reply, result);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.rel(ino).and_then(|rel| self.guarded(&rel, false, || Ok(())));
        match result {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let result = self.rel(ino).and_then(|rel| {
            self.guarded(&rel, false, || {
                let mut entries: Vec<(INodeNo, FileType, OsString)> = vec![(ino, FileType::Directory, ".".into()), (ino, FileType::Directory, "..".into())];
                for entry in fs::read_dir(self.full(&rel)).map_err(errno)? {
                    let entry = entry.map_err(errno)?;
                    let Ok(meta) = entry.metadata() else { continue };
                    entries.push((self.ino_of(&meta), kind_of(meta.mode()), entry.file_name()));
                }
                Ok(entries)
            })
        });
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(usize::try_from(offset).unwrap_or(usize::MAX)) {
                    if reply.add(ino, (i + 1) as u64, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let result = self.guarded(Path::new(""), false, || nix::sys::statvfs::statvfs(&self.backing).map_err(|e| Errno::from_i32(e as i32)));
        match result {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                u32::try_from(s.block_size()).unwrap_or(4096),
                u32::try_from(s.name_max()).unwrap_or(255),
                u32::try_from(s.fragment_size()).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    // No extended attributes (the kernel asks for security.capability on every exec); a hung
    // or failing disk hangs or fails these reads too.
    fn getxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        let result: Result<(), Errno> = self.rel(ino).and_then(|rel| self.guarded(&rel, false, || Err(Errno::EOPNOTSUPP)));
        reply.error(result.err().unwrap_or(Errno::EOPNOTSUPP));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, _size: u32, reply: ReplyXattr) {
        let result: Result<(), Errno> = self.rel(ino).and_then(|rel| self.guarded(&rel, false, || Err(Errno::EOPNOTSUPP)));
        reply.error(result.err().unwrap_or(Errno::EOPNOTSUPP));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are the kernel's (default_permissions); only existence and faults here.
        let result = self.rel(ino).and_then(|rel| self.guarded(&rel, false, || fs::symlink_metadata(self.full(&rel)).map(|_| ()).map_err(errno)));
        Self::empty(reply, result);
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let result = self.child(parent, name).and_then(|rel| {
            self.guarded(&rel, false, || {
                let mut options = Self::open_flags(flags);
                options.create(true).mode(mode & !umask & 0o7777);
                if flags & libc::O_EXCL != 0 {
                    options.create_new(true);
                }
                if flags & libc::O_ACCMODE == libc::O_RDONLY {
                    // create() with O_RDONLY still creates; std needs write or append for create.
                    options.write(true);
                }
                let file = options.open(self.full(&rel)).map_err(errno)?;
                self.own(&rel, req)?;
                Ok((self.remember(rel.clone())?, file))
            })
        });
        match result {
            Ok((attr, file)) => reply.created(&TTL, &attr, Generation(0), self.handle(file), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_time_on_the_backing_disk_is_a_time_not_a_panic() {
        // Nanoseconds past a second carried into a seconds field already at its maximum.
        assert!(system_time(i64::MAX, 2_000_000_000) > UNIX_EPOCH);
        assert!(system_time(i64::MIN, -1) < UNIX_EPOCH);
        assert_eq!(system_time(1, 2_000_000_000), UNIX_EPOCH + Duration::new(1, 999_999_999));
        assert_eq!(system_time(-2, 0), UNIX_EPOCH - Duration::from_secs(2));
    }

    #[test]
    fn the_gate_follows_the_switch() {
        let switch = FaultSwitch::default();
        let os_release = Path::new("etc/os-release");
        assert_eq!(switch.gate(os_release, true), Ok(()));
        switch.fail_file(os_release, true);
        assert_eq!(switch.gate(os_release, true), Err(Errno::EIO));
        assert_eq!(switch.gate(os_release, false), Ok(()), "the file is still there, only its content fails");
        assert_eq!(switch.gate(Path::new("etc/hostname"), true), Ok(()));
        switch.fail_file(os_release, false);
        assert_eq!(switch.gate(os_release, true), Ok(()));
        switch.set(DiskFault::Error);
        assert_eq!(switch.gate(Path::new("anything"), false), Err(Errno::EIO));
        switch.set(DiskFault::Healthy);
        assert_eq!(switch.gate(Path::new("anything"), false), Ok(()));
    }

    #[test]
    fn a_hang_blocks_until_the_switch_moves_and_closing_releases_with_an_error() {
        let switch = Arc::new(FaultSwitch::default());
        switch.set(DiskFault::Hang);
        let waiter = {
            let switch = switch.clone();
            std::thread::spawn(move || switch.gate(Path::new("x"), false))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while switch.blocked() == 0 {
            assert!(std::time::Instant::now() < deadline, "the operation never blocked");
            std::thread::yield_now();
        }
        switch.set(DiskFault::Healthy);
        assert_eq!(waiter.join().unwrap(), Ok(()));
        switch.set(DiskFault::Hang);
        let waiter = {
            let switch = switch.clone();
            std::thread::spawn(move || switch.gate(Path::new("x"), false))
        };
        while switch.blocked() == 0 {
            assert!(std::time::Instant::now() < deadline, "the operation never blocked");
            std::thread::yield_now();
        }
        switch.close();
        assert_eq!(waiter.join().unwrap(), Err(Errno::EIO));
        assert_eq!(switch.blocked(), 0);
    }

    #[test]
    fn what_a_non_root_program_creates_is_its_own_and_it_can_write_it_again() {
        use std::os::unix::process::CommandExt as _;
        // Needs root and /dev/fuse, as the lab's real nodes do (CI runs as root).
        let backing = tempfile::tempdir().unwrap();
        let mountpoint = tempfile::tempdir().unwrap();
        fs::create_dir(backing.path().join("shared")).unwrap();
        fs::set_permissions(backing.path().join("shared"), fs::Permissions::from_mode(0o777)).unwrap();
        let disk = FaultDisk::mount(backing.path(), mountpoint.path()).unwrap();
        // As the agent does each round: create (truncate) and write, twice, then a directory.
        let dir = disk.mountpoint().join("shared");
        let out = std::process::Command::new("sh")
            .args(["-c", "echo one > heartbeat && echo two > heartbeat && mkdir sub && echo three > sub/f && cat heartbeat"])
            .current_dir(&dir)
            .uid(65532)
            .gid(65532)
            .output()
            .unwrap();
        assert!(out.status.success(), "as uid 65532: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "two\n");
        for made in ["shared/heartbeat", "shared/sub", "shared/sub/f"] {
            let meta = fs::symlink_metadata(backing.path().join(made)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65532, 65532), "{made} on the backing disk");
        }
        drop(disk);
    }
}
